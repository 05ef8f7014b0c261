"""The threat-model boundary: attacks see a Payload and declared knowledge, never client data."""

import dataclasses
import inspect

import pytest
import torch

from fedleak.attacks import ATTACKS, Attack, AttackerKnowledge
from fedleak.attacks.base import AttackConfig, Reconstruction
from fedleak.config import build_config
from fedleak.fl import ClientData, Payload
from fedleak.pipeline import run


def test_attack_interface_takes_no_client_data():
    params = list(inspect.signature(Attack.run).parameters)
    assert params == ["self", "payload", "knowledge", "seed", "progress"]
    fields = {f.name: f.type for f in dataclasses.fields(AttackerKnowledge)}
    assert "images" not in fields and not any("ClientData" in str(t) for t in fields.values())
    assert {f.name for f in dataclasses.fields(Payload)} == {"model_state", "update", "hyper"}
    for cls in (ATTACKS.get(n) for n in ATTACKS.names()):
        assert list(inspect.signature(cls.run).parameters) == params


class _Spy(Attack):
    """Records exactly what the pipeline hands an attack."""

    seen: list = []

    def run(self, payload, knowledge, seed=0, progress=False):
        _Spy.seen.append((payload, knowledge))
        b = payload.hyper.batch_size
        return Reconstruction(torch.zeros(b, *knowledge.input_shape), torch.zeros(b, dtype=torch.long),
                              0.0, [0.0], 0, 0.0)


@pytest.fixture
def spy():
    ATTACKS._entries["_spy"] = _Spy
    _Spy.Config = AttackConfig
    _Spy.seen.clear()
    yield _Spy
    del ATTACKS._entries["_spy"]


@pytest.mark.parametrize("declared", [False, True])
def test_pipeline_hands_labels_only_when_declared(spy, declared):
    cfg = build_config(flags={"attack.name": "_spy", "model.name": "lenet", "client.batch_size": 2,
                              "knowledge.labels": declared})
    result = run(cfg)
    payload, knowledge = spy.seen[0]
    assert isinstance(payload, Payload) and not isinstance(payload, ClientData)
    if declared:
        assert torch.equal(knowledge.labels, result.truth.labels)
    else:
        assert knowledge.labels is None
    for value in list(vars(knowledge).values()) + list(vars(payload).values()):
        assert value is not result.truth.images
        if isinstance(value, torch.Tensor):
            assert value.shape != result.truth.images.shape
