"""Bring your own model: ``package.module:factory`` specs, and the checks an attack needs.

The factory is called with whichever of ``num_classes``, ``in_channels``, ``image_size`` (an int for
square images, ``(H, W)`` otherwise), ``width`` (only when the user set one) and the model options it
accepts, and must return an ``nn.Module`` (a user's own, or a timm / torchvision model where those
import). The module is looked up as ``python -m`` would: installed packages and the current folder.
:func:`check_attackable` then makes sure gradient inversion can work on it and says what is wrong when
it cannot. Specs come only from the user's own command line or Python, never from a file fedleak reads
(a config file, a study's settings or folder, a checkpoint) unless the user passes ``--trust-config``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fedleak.errors import ConfigError, FedleakError
from fedleak.validate import short


def is_external(name: str) -> bool:
    return ":" in name


def refuse_external(name: str, where: str) -> None:
    """Refuse a ``package.module:factory`` that ``where`` (a file fedleak reads: a checkpoint, a study
    folder, a results database) names: importing it would run code a file chose. Only the user's own
    command line or Python may name an external factory (a config file too, with ``--trust-config``)."""
    if is_external(name):
        raise ConfigError(f"{where} names the external model {short(name)}; fedleak imports no code a file "
                          "names (pass --model package.module:factory yourself to use your own model)")


def named_factories(*values: Any) -> frozenset[str]:
    """Every ``package.module:factory``-like string in ``values`` (nested lists and mappings too): the
    factories the user's own command line (or Python) names, which a file may then name as well."""
    found: set[str] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if is_external(value):
                found.add(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return frozenset(found)


def refuse_file_factory(name: str, where: str, how: str) -> None:
    """Refuse the ``package.module:factory`` that ``where`` (a config file, a study's settings) names
    and the command line does not: a file never chooses code to import. ``how`` is the command-line
    spelling that names it instead (``--model NAME``, ``--set model=NAME``)."""
    raise ConfigError(f"{where} names the external model {short(name)}; fedleak imports no code a file names: "
                      f"name it on the command line ({how.format(name=short(name))}) or pass --trust-config "
                      "if you trust the file")


def resolve_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model {spec!r}: expected package.module:factory")
    try:
        module = _import_from_here(module_name)
    except Exception as exc:  # an import error of the user's module, whatever its kind
        raise ConfigError(f"model {spec!r}: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {spec!r}: {attr!r} is not callable")
    return obj


def _import_from_here(module_name: str) -> Any:
    """Import ``module_name`` with the current folder on the import path for this lookup only (as
    ``python -m`` has it), so ``--model mymodels:net`` finds ``./mymodels.py`` from the console script."""
    here = os.getcwd()
    add = here not in sys.path and "" not in sys.path
    if add:
        sys.path.insert(0, here)
        importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    finally:
        if add and here in sys.path:
            sys.path.remove(here)


def build_external(spec: str, **arguments: Any) -> nn.Module:
    """Call the factory with the arguments its signature accepts."""
    factory = resolve_factory(spec)
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = arguments if takes_all else {k: v for k, v in arguments.items() if k in params}
    except (TypeError, ValueError):  # builtins without a signature
        kwargs = {}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ConfigError(f"model {spec!r}: the factory failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def check_attackable(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Fail with one clear line unless ``model`` maps a batch to ``num_classes`` logits and supports
    the double backward that gradient matching needs. The probe runs where the model is (a model
    already on a GPU is checked there), in its dtype; the probe batch is drawn on the host and moved,
    so it is the same on every device."""
    probe = model.train(False)
    params = [p for p in probe.parameters() if p.requires_grad]
    if not params:
        raise FedleakError("the model has no trainable parameters: its clients would send no update")
    device, dtype = params[0].device, next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0), device="cpu")
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    try:
        out = probe(x)
    except Exception as exc:
        raise FedleakError(f"the model cannot take inputs of shape {tuple(x.shape)}: {_first(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FedleakError(f"the model must return logits of shape (batch, {num_classes}), got {shape}")
    try:
        labels = torch.tensor([0, num_classes - 1], device=out.device)
        grads = torch.autograd.grad(F.cross_entropy(out, labels), params,
                                    create_graph=True, allow_unused=True)
        used = [g for g in grads if g is not None]
        second = torch.autograd.grad(cast(torch.Tensor, sum(g.pow(2).sum() for g in used)), x, allow_unused=True)[0]
    except RuntimeError as exc:
        raise FedleakError(
            f"the model does not support the double backward attacks need (an in-place operation?): {_first(exc)}"
        ) from None
    if second is None or not torch.isfinite(second).all() or second.abs().max() == 0:
        raise FedleakError(
            "the gradient of the model's update does not depend on its input; "
            "gradient matching gets no signal (non-differentiable layers or detached activations?)"
        )


def _first(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
