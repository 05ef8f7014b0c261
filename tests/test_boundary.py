"""The threat-model boundary: attacks see a Payload and declared knowledge, never client data.

``leaks`` walks everything an attack is handed (the payload's model state, update, buffers and public
hyperparameters; every field of the attacker knowledge, the architecture's
parameters, buffers, attributes and hooks included) and reports each tensor that shares storage with
the client's images or labels, or holds their values. The tests of the checker itself make a
pipeline leak on purpose and assert the checker names the leak.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import Tensor

from fedleak import pipeline
from fedleak.modalities import image as image_modality
from fedleak.attacks import ATTACKS, Attack, AttackerKnowledge
from fedleak.attacks.base import AttackConfig, Reconstruction
from fedleak.config import build_config
from fedleak.fl import Client, ClientData, Payload, normalize
from fedleak.pipeline import run

_OPAQUE = (str, bytes, int, float, complex, bool, type(None), type, torch.dtype, torch.device,
           types.ModuleType, types.BuiltinFunctionType)


def reachable_tensors(obj: object, path: str, seen: set[int] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Every tensor reachable from ``obj`` (through mappings, sequences, dataclass fields, object
    attributes — an ``nn.Module``'s parameters, buffers, submodules and hooks live there — and the
    cells of closures), with the path that reaches it."""
    seen = set() if seen is None else seen
    if isinstance(obj, _OPAQUE) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield path, obj
        if obj.grad is not None:
            yield from reachable_tensors(obj.grad, f"{path}.grad", seen)
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from reachable_tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            yield from reachable_tensors(value, f"{path}[{i}]", seen)
    elif isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            yield from reachable_tensors(cell.cell_contents, f"{path}.<closure {i}>", seen)
    elif isinstance(obj, types.MethodType):
        yield from reachable_tensors(obj.__self__, f"{path}.__self__", seen)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from reachable_tensors(getattr(obj, f.name), f"{path}.{f.name}", seen)
    elif hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            yield from reachable_tensors(value, f"{path}.{key}", seen)


def _span(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _holds_images(t: Tensor, images: Tensor) -> bool:
    """Whether ``t`` holds the values of the batch, of some of its images, or of one image."""
    per_image = images[0].numel()
    if not t.is_floating_point() or t.numel() == 0 or t.numel() % per_image:
        return False
    rows = t.detach().reshape(-1, per_image).to(images.dtype)
    flat = images.reshape(len(images), per_image)
    return bool(((rows[:, None] - flat[None]).abs().amax(-1) <= 1e-6).any())


def leaks(payload: Payload, knowledge: AttackerKnowledge, truth: ClientData, labels_declared: bool) -> list[str]:
    """Every way what the attack was handed reaches the client's private data (empty: none).

    A tensor leaks when its storage overlaps that of ``truth.images`` or ``truth.labels``, when it holds
    the images' values (as given or as normalised for the model), or the labels' values. The one
    exception is ``knowledge.labels`` when the run declares the labels known: then it must hold the
    labels' values, in a copy."""
    private = {"images": _span(truth.images), "labels": _span(truth.labels)}
    seen_as = [truth.images, normalize(truth.images, knowledge.mean, knowledge.std)]
    found = []
    seen: set[int] = set()
    handed = [*reachable_tensors(payload, "payload", seen), *reachable_tensors(knowledge, "knowledge", seen)]
    for where, t in handed:
        lo, hi = _span(t)
        found += [f"{where} shares storage with the client's {name}"
                  for name, (p_lo, p_hi) in private.items() if hi > lo and lo < p_hi and p_lo < hi]
        if any(_holds_images(t, images) for images in seen_as):
            found.append(f"{where} holds the client's images")
        declared = labels_declared and where == "knowledge.labels"
        if not declared and t.shape == truth.labels.shape and t.dtype == truth.labels.dtype \
                and torch.equal(t, truth.labels):
            found.append(f"{where} holds the client's labels")
    if labels_declared and not (isinstance(knowledge.labels, Tensor) and torch.equal(knowledge.labels, truth.labels)):
        found.append("knowledge.labels does not hold the declared labels")
    return found


def test_attack_interface_takes_no_client_data():
    params = list(inspect.signature(Attack.run).parameters)
    assert params == ["self", "payload", "knowledge", "seed", "progress"]
    fields = {f.name: f.type for f in dataclasses.fields(AttackerKnowledge)}
    assert "images" not in fields and not any("ClientData" in str(t) for t in fields.values())
    assert {f.name for f in dataclasses.fields(Payload)} == {"model_state", "update", "hyper", "buffers"}
    for cls in (ATTACKS.get(n) for n in ATTACKS.names()):
        assert list(inspect.signature(cls.run).parameters) == params


class _Spy(Attack):
    """Records exactly what the pipeline hands an attack."""

    seen: list = []

    def run(self, payload, knowledge, seed=0, progress=False):
        _Spy.seen.append((payload, knowledge))
        b = payload.hyper.observed_images
        return Reconstruction(torch.zeros(b, *knowledge.input_shape), torch.zeros(b, dtype=torch.long),
                              0.0, [0.0], 0, 0.0)


@pytest.fixture
def spy():
    ATTACKS._entries["spy"] = _Spy
    _Spy.Config = AttackConfig
    _Spy.seen.clear()
    yield _Spy
    del ATTACKS._entries["spy"]


SETTINGS = {
    "fedsgd": {"model.name": "lenet", "client.batch_size": 2},
    "labels": {"model.name": "lenet", "client.batch_size": 2, "knowledge.labels": True},
    "bn-stats": {"model.name": "convnet", "model.mode": "train", "client.batch_size": 2,
                 "knowledge.labels": True, "knowledge.bn_stats": True},
    "fedavg": {"model.name": "lenet", "client.batch_size": 2, "client.protocol": "fedavg",
               "client.local_steps": 2, "client.local_batch_size": 1},
    "aggregate+noise": {"model.name": "lenet", "client.batch_size": 1,
                        "client.defense": "aggregate:clients=2+noise:snr_db=10"},
}


def _run_spied(spy, settings):
    flags = {"attack.name": "spy", "data.image_size": 12, "threat": "H", **settings}
    cfg = build_config(flags=flags)
    result = run(cfg)
    payload, knowledge = spy.seen[-1]
    return cfg, result, payload, knowledge


@pytest.mark.parametrize("case", list(SETTINGS))
def test_nothing_the_attack_receives_reaches_the_client_data(spy, case):
    cfg, result, payload, knowledge = _run_spied(spy, SETTINGS[case])
    assert isinstance(payload, Payload) and not isinstance(payload, ClientData)
    assert leaks(payload, knowledge, result.truth, cfg.knowledge.labels) == []
    if cfg.knowledge.labels:
        assert torch.equal(knowledge.labels, result.truth.labels)
    else:
        assert knowledge.labels is None
    assert (knowledge.bn_stats is not None) == cfg.knowledge.bn_stats
    # The walk reached every parameter and buffer of the architecture and every payload tensor.
    walked = {id(t) for _, t in reachable_tensors((payload, knowledge), "handed")}
    expected = [*knowledge.architecture.parameters(), *knowledge.architecture.buffers(),
                *payload.update.values(), *payload.model_state.values(), *payload.buffers.values()]
    assert all(id(t) in walked for t in expected)


class _Stash:
    """What a leaking client saw, for a leaking pipeline to pass on."""

    data: ClientData | None = None


def _leaky_client(payload_leak=None, bn_leak=None):
    class LeakyClient(Client):
        def update(self, data):
            _Stash.data = data
            payload = super().update(data)
            if payload_leak is None:
                return payload
            return dataclasses.replace(payload, buffers={**payload.buffers, "stash": payload_leak(data)})

        def batch_norm_statistics(self, data):
            stats = super().batch_norm_statistics(data)
            return stats if bn_leak is None else [*stats, bn_leak(data)]

    return LeakyClient


def _leaky_knowledge(change):
    def make(**fields):
        change(fields, _Stash.data)
        return AttackerKnowledge(**fields)

    return make


def _buffer(fields, data):
    fields["architecture"].register_buffer("stash", data.images[1].clone())


def _hook(fields, data):
    images = data.images
    fields["architecture"].register_forward_hook(lambda module, args, out: images.sum())


def _own_labels(fields, data):
    fields["labels"] = data.labels


LEAKS = {  # name: (settings, client patch, knowledge patch, where the checker must point)
    "the images among the buffers": (
        "fedsgd", _leaky_client(payload_leak=lambda d: d.images), None, "payload.buffers['stash']"),
    "a view of one image's channel": (
        "fedsgd", _leaky_client(payload_leak=lambda d: d.images[0, 0]), None, "shares storage with the client's images"),
    "the labels, copied, undeclared": (
        "fedsgd", _leaky_client(payload_leak=lambda d: d.labels.clone()), None, "holds the client's labels"),
    "the images among the bn statistics": (
        "bn-stats", _leaky_client(bn_leak=lambda d: (d.images, d.images.var(0))), None, "knowledge.bn_stats"),
    "one image, copied into an architecture buffer": (
        "fedsgd", _leaky_client(), _buffer, "knowledge.architecture._buffers['stash'] holds the client's images"),
    "the images in a forward hook's closure": (
        "fedsgd", _leaky_client(), _hook, "knowledge.architecture._forward_hooks"),
    "declared labels that are the client's own tensor": (
        "labels", _leaky_client(), _own_labels, "knowledge.labels shares storage with the client's labels"),
}


@pytest.mark.parametrize("name", list(LEAKS))
def test_the_checker_catches_a_leaking_pipeline(spy, monkeypatch, name):
    case, client, change, where = LEAKS[name]
    _Stash.data = None
    monkeypatch.setattr(pipeline, "Client", client)
    if change is not None:
        # the image modality builds what the attacker is told (fedleak.modalities.image)
        monkeypatch.setattr(image_modality, "AttackerKnowledge", _leaky_knowledge(change))
    cfg, result, payload, knowledge = _run_spied(spy, SETTINGS[case])
    assert _Stash.data is result.truth  # the leaking client really ran in the pipeline
    found = leaks(payload, knowledge, result.truth, cfg.knowledge.labels)
    assert any(where in f for f in found), found


def test_the_checker_catches_copied_normalised_images(spy, monkeypatch):
    """A leak by value: a fresh tensor (no shared storage) holding the model's normalised inputs."""
    seen = {}

    class Leaky(Client):
        def update(self, data):
            payload = super().update(data)
            inputs = self.normalization.to_input(data.images).clone()
            seen["data"] = data
            return dataclasses.replace(payload, buffers={**payload.buffers, "inputs": inputs})

    monkeypatch.setattr(pipeline, "Client", Leaky)
    cfg, result, payload, knowledge = _run_spied(spy, SETTINGS["fedsgd"])
    assert seen["data"] is result.truth
    assert leaks(payload, knowledge, result.truth, False) == ["payload.buffers['inputs'] holds the client's images"]
