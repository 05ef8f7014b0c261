"""A Flower ``ArrayRecord`` read as the audited model's state: its keys matched to the model's
parameter names (as they are, positionally, or without the wrappers' parts — peft's adapters-only
state dicts, FlowerTune's messages), shapes checked, frozen parameters it leaves out taken from the
model."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord
from torch import Tensor, nn

from fedleak.errors import FedleakError
from fedleak.validate import short


def _plain(name: str) -> str:
    """A parameter name without the wrappers' parts: fedleak's text wrapper (``hf.``), peft's model
    (``base_model.model.``) and adapter name (``.default``) — so that peft's
    ``get_peft_model_state_dict`` (the adapters only, FlowerTune's message) and a bare transformers
    state dict name the same tensors as the audited model."""
    for prefix in ("hf.", "base_model.model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".default.", ".")


def state_names(record: ArrayRecord, model: nn.Module, what: str) -> dict[str, str]:
    """Each key of ``record`` → the name in ``model``'s state dict it holds: the key itself, the name
    at that position when the record is a plain list of arrays (keys "0", "1", …), or the name it
    matches without the wrappers' parts (:func:`_plain`). Every trainable parameter must be there;
    a frozen one (a LoRA base weight, which only the adapters' apps leave out) or a buffer may be
    missing (:func:`state_dict` takes it from the model)."""
    reference = model.state_dict()
    keys = list(record.keys())
    if keys == [str(i) for i in range(len(keys))] and len(keys) == len(reference) and keys != list(reference):
        names = dict(zip(keys, reference))  # positional, as ArrayRecord(list of ndarrays) numbers them
    else:
        plain: dict[str, list[str]] = {}
        for n in reference:
            plain.setdefault(_plain(n), []).append(n)
        names = {}
        for k in keys:
            match = plain.get(_plain(k), [])
            names[k] = k if k in reference else match[0] if len(match) == 1 else k
    unexpected = [k for k, n in names.items() if n not in reference]
    if unexpected:
        raise FedleakError(f"{what} holds {short(unexpected[0])!r}, which names nothing of the audited model")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in names.values()]
    if missing:
        raise FedleakError(f"{what} lacks parameter {missing[0]!r} of the audited model")
    return names


def state_dict(record: ArrayRecord, model: nn.Module, what: str) -> dict[str, Tensor]:
    """``record`` as tensors named like ``model``'s state dict (see :func:`state_names`), each
    checked against the model's shape, in its dtype and on its device (a payload built from them
    lands where the audit's model is); frozen parameters the record leaves out are the model's own
    (the public base model every client starts from)."""
    reference = model.state_dict()
    names = state_names(record, model, what)
    state = {}
    for key, name in names.items():
        tensor = torch.from_numpy(record[key].numpy().copy())
        if tuple(tensor.shape) != tuple(reference[name].shape):
            raise FedleakError(f"{what}: {name!r} has shape {tuple(tensor.shape)}, the model's {tuple(reference[name].shape)}")
        state[name] = tensor.to(device=reference[name].device, dtype=reference[name].dtype)
    for name, p in model.named_parameters():
        if name not in state and not p.requires_grad:
            state[name] = reference[name].detach().clone()
    return state
