"""Verdicts that cannot give false assurance (fedleak.verdicts), the risk calibration (fedleak.calibration),
and both as the audit (fedleak.audit.audit_update) and the client-side gate use them."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.audit import audit_attack, audit_update
from fedleak.calibration import calibrated, calibration_rows, calibration_table, draw_calibration, fit_calibration
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData, ClientTraining
from fedleak.integrations.flower import leakage_gate, record_batch
from fedleak.integrations.flower.gate import within_budget
from fedleak.models import create_model
from fedleak.specification import SpecificationCheck
from fedleak.verdicts import (
    INCONCLUSIVE,
    LEAKS,
    NO_LEAK,
    SIMULATION_FIT,
    Findings,
    decide,
    minimum_iterations,
    order_unknown,
)
from tests.test_specification import EXAMPLES, MEAN, STD, declared_update, smooth, tiny_net


def check(consistent: bool) -> SpecificationCheck:
    reason = "consistent: …" if consistent else "mis-specified: the update's norm 9 is above what …"
    return SpecificationCheck(consistent, reason, 1.0, (1.0, 1.0), (0.5, 2.0), 0.0, 0.0, 1.0, 2, "public images")


# --- the decision ----------------------------------------------------------------------------------------------

def test_no_leak_found_needs_everything_verified():
    ok = Findings("ig", 1200, 1000, 4, check(True), probability=0.01)
    verdict = decide(ok)
    assert verdict.verdict == NO_LEAK and "ig at 1200 iterations (minimum 1000)" in verdict.reason
    assert "simulation verified" in verdict.reason
    cases = {  # each condition missing alone → inconclusive, the reason naming it
        "mis-specified": dataclasses.replace(ok, specification=check(False)),
        "budget below the attack's minimum: ig ran 5 of the 1000": dataclasses.replace(ok, iterations=5),
        "data order unknown": dataclasses.replace(ok, order_unknown="the client shuffles with a private seed"),
        "between 0.05 and 0.5": dataclasses.replace(ok, probability=0.2),
        "not verified": dataclasses.replace(ok, specification=None),
    }
    for says, findings in cases.items():
        verdict = decide(findings)
        assert verdict.verdict == INCONCLUSIVE and says in verdict.reason, (says, verdict)


def test_evidence_of_a_leak_stands_and_a_mis_specified_calibration_is_not_used():
    under_budget = Findings("ig", 5, 1000, 4, check(False), truth_fit=0.5, recognisable=2, label_accuracy=0.5)
    verdict = decide(under_budget)
    assert verdict.verdict == LEAKS and "2 of 4 reconstructed images beat their mean-colour guess" in verdict.reason
    labels = decide(Findings("ig", 5, 1000, 1, None, truth_fit=1.0, recognisable=0, label_accuracy=1.0))
    assert labels.verdict == LEAKS and "all 1 label recovered exactly" in labels.reason
    calibrated_leak = Findings("ig", 1000, 1000, 1, check(True), probability=0.9)
    assert decide(calibrated_leak).verdict == LEAKS
    assert decide(dataclasses.replace(calibrated_leak, specification=check(False))).verdict == INCONCLUSIVE
    assert decide(dataclasses.replace(calibrated_leak, bound="lower bound")).verdict == LEAKS  # at least 0.9
    assert decide(dataclasses.replace(calibrated_leak, bound="upper bound")).verdict == INCONCLUSIVE  # at most 0.9
    safe = dataclasses.replace(calibrated_leak, probability=0.01)
    assert decide(dataclasses.replace(safe, bound="upper bound")).verdict == NO_LEAK  # at most 0.01
    assert decide(dataclasses.replace(safe, bound="lower bound")).verdict == INCONCLUSIVE  # at least 0.01
    truth = Findings("ig", 1000, 1000, 4, None, truth_fit=SIMULATION_FIT - 0.1, recognisable=0, label_accuracy=0.5)
    assert decide(truth).verdict == INCONCLUSIVE and "own batch explains its update" in decide(truth).reason
    assert decide(dataclasses.replace(truth, truth_fit=1.0)).verdict == NO_LEAK


def test_minimum_iterations_and_data_order():
    assert minimum_iterations("ig") == 1000 and minimum_iterations("analytic") == 0
    assert minimum_iterations("unregistered", build_attack("ig").config) == 1000
    # SPEAR's later-layer feature inversion runs its default 400 steps: enough, not "below its minimum"
    assert minimum_iterations("spear", build_attack("spear").config) == build_attack("spear").config.iterations
    shuffled = ClientTraining("fedavg", lr=0.1, local_batch_size=2, epochs=1, shuffle=True).public(4)
    assert "private seed" in order_unknown(shuffled)
    seeded = dataclasses.replace(shuffled, shuffle=False, shuffle_seed=3)
    assert order_unknown(seeded) is None and order_unknown(ClientTraining().public(4)) is None
    in_order = dataclasses.replace(shuffled, shuffle=False)
    assert order_unknown(in_order) is None
    assert "assumed" in order_unknown(in_order, ["'shuffle-seed': each epoch walks the examples in the client's own order"])


# --- the calibration ------------------------------------------------------------------------------------------

def test_isotonic_calibration_against_a_hand_computed_one():
    # pool-adjacent-violators by hand: outcomes 1, 0, 1, 1 at fits 0.1 … 0.4 → 0.5, 0.5, 1, 1
    steps = fit_calibration([0.3, 0.1, 0.4, 0.2], [True, True, True, False])
    assert steps == {"fit": [0.1, 0.2, 0.3, 0.4], "probability": [0.5, 0.5, 1.0, 1.0]}


def test_the_stored_calibration_loads_is_monotone_and_is_read_conservatively():
    table = calibration_table()
    assert table["target"] and table["observable"] == "update fit" and table["conditions"]["attack"]
    sizes = [t["batch_size"] for t in table["tables"]]
    assert sizes == sorted(sizes) and sizes[0] == 1
    for t in table["tables"]:
        assert np.all(np.diff(t["fit"]) >= 0) and np.all(np.diff(t["probability"]) >= 0), t
        assert 0 <= t["probability"][0] and t["probability"][-1] <= 1 and 0 <= t["recognisable"] <= t["updates"]
        low, high = t["fit"][0], t["fit"][-1]
        assert calibrated(low - 0.1, t["batch_size"]) == (t["probability"][0], "upper bound")  # held at its ends
        assert calibrated(high + 0.1, t["batch_size"]) == (t["probability"][-1], "lower bound")
        assert calibrated(high, t["batch_size"]) == (pytest.approx(t["probability"][-1]), "estimate")
    # a batch size between two calibrated ones reads the smaller one's (which overstates the risk)
    largest = table["tables"][-1]
    assert calibrated(largest["fit"][-1], largest["batch_size"] * 4)[0] == pytest.approx(largest["probability"][-1])
    rows = calibration_rows()
    assert len(rows) == sum(len(t["fit"]) for t in table["tables"])
    json.dumps(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    draw_calibration(ax)
    assert len(ax.lines) == len(table["tables"])
    plt.close(fig)


# --- the audit ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting():
    model = tiny_net()
    return model, AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD), smooth(256, 99)


def test_a_mis_specified_audit_is_inconclusive_never_low_risk(setting):
    """Declared no momentum; the client used momentum 0.9 (checked by the update's norms, no batch shared)."""
    model, knowledge, (public, labels) = setting
    record = audit_update(declared_update(model, momentum=0.9), knowledge, build_attack("ig", {"iterations": 2}),
                          round=1, client="c", public=public, public_labels=labels, min_iterations=2)
    assert record.verdict == INCONCLUSIVE and "mis-specified" in record.verdict_reason, record.verdict_reason
    assert not record.specification.consistent and not record.verified and np.isnan(record.risk)
    metrics = record.metrics()
    assert metrics["verdict"] == INCONCLUSIVE and metrics["iterations_run"] == 2 and metrics["min_iterations"] == 2
    assert metrics["specification"]["consistent"] is False and metrics["verdict_reason"] == record.verdict_reason


def test_wrong_epochs_are_mis_specified_on_the_clients_own_batch(setting):
    """Declared one epoch; the client ran 3: its own batch, simulated as declared, does not explain its update."""
    model, knowledge, _ = setting
    x, y = smooth(EXAMPLES, 1)
    record = audit_update(declared_update(model, epochs=3), knowledge, build_attack("ig", {"iterations": 2}),
                          round=1, client="c", check=False, truth=ClientData(x, y), min_iterations=2)
    assert record.truth_fit < SIMULATION_FIT and not record.verified
    assert record.verdict in (INCONCLUSIVE, LEAKS)  # a leak would stand; it never says no leak found
    if record.verdict == INCONCLUSIVE:
        assert "mis-specified: the client's own batch explains its update with cosine only" in record.verdict_reason


def test_a_correct_simulation_under_budget_is_inconclusive_and_says_how_many_iterations_ran(setting):
    model, knowledge, (public, labels) = setting
    x, y = smooth(EXAMPLES, 1)
    record = audit_update(declared_update(model), knowledge, build_attack("ig", {"iterations": 3}), round=1,
                          client="c", public=public, public_labels=labels, truth=ClientData(x, y))
    assert record.specification.consistent and record.truth_fit > 0.999 and record.verified
    assert record.iterations_run == 3 and record.min_iterations == 1000
    assert record.verdict in (INCONCLUSIVE, LEAKS)
    if record.verdict == INCONCLUSIVE:
        assert "ig ran 3 of the 1000 iterations" in record.verdict_reason


def test_a_correct_fedsgd_batch_of_one_with_a_working_attack_leaks():
    model = create_model("mlp", 3, 3, 8, width=0.25, seed=0)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD)
    x, y = smooth(1, 4)
    payload = Client(model, Normalization(MEAN, STD)).update(ClientData(x, y))
    analytic = build_attack("analytic")
    scored = audit_update(payload, knowledge, analytic, round=1, client="c", truth=ClientData(x, y))
    assert scored.verdict == LEAKS and "1 of 1 reconstructed image beat its mean-colour guess" in scored.verdict_reason
    assert scored.evaluation.psnr > 40 and scored.truth_fit > 0.999 and scored.iterations_run == 0
    unscored = audit_update(payload, knowledge, analytic, round=1, client="c")  # no truth: the calibration decides
    assert unscored.update_fit > 0.999 and unscored.specification.consistent, unscored.specification.reason
    assert unscored.verdict == LEAKS and "calibrated P(recognisable)" in unscored.verdict_reason
    assert unscored.risk >= 0.5


# --- the gate ---------------------------------------------------------------------------------------------------

GATE_EXAMPLES, CLASSES = 16, 3
TRAIN = {"lr": 0.1, "local-epochs": 1, "batch-size": 4, "momentum": 0.0, "weight-decay": 0.0, "shuffle-seed": 1,
         "model-mode": "train"}


def train_round(message, context):
    """A plain PyTorch client: the global model, SGD over its 16 examples in minibatches of 4 (seeded order)."""
    config = message.content["config"]
    model = tiny_net()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    images, labels = smooth(GATE_EXAMPLES, 7)
    sampler = torch.utils.data.DistributedSampler(range(GATE_EXAMPLES), num_replicas=1, rank=0, shuffle=True,
                                                  seed=int(config["shuffle-seed"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
    model.train()
    sampler.set_epoch(0)
    order = list(sampler)
    for start in range(0, GATE_EXAMPLES, int(config["batch-size"])):
        batch = order[start:start + int(config["batch-size"])]
        optimizer.zero_grad()
        F.cross_entropy(model(Normalization(MEAN, STD).to_input(images[batch])), labels[batch]).backward()
        optimizer.step()
    record_batch(context, message, images, labels)
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": GATE_EXAMPLES})}), reply_to=message)


@pytest.fixture
def task_identity(monkeypatch):
    """A ClientApp process has a task identity (the simulation engine sets it); give this one one."""
    for name, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 1000)):
        monkeypatch.setattr(TaskIdentity, name, value)


def exchange(**gate):
    app = ClientApp(mods=[leakage_gate(tiny_net, num_classes=CLASSES, mean=MEAN, std=STD, **gate)])
    app.train()(train_round)
    message = Message(RecordDict({"arrays": ArrayRecord(tiny_net().state_dict()),
                                  "config": ConfigRecord(TRAIN | {"server-round": 1})}),
                      dst_node_id=1000, message_type=MessageType.TRAIN)
    context = Context(run_id=7, node_id=1000, node_config={}, state=RecordDict(), run_config={})
    return app(message, context)


@pytest.mark.usefixtures("task_identity")
def test_the_gate_under_a_tiny_budget_is_inconclusive_and_reports_the_iterations():
    reply = exchange(attack={"name": "ig", "iterations": 20}, budget_s=None)
    metrics = reply.content["metrics"]
    assert metrics["fedleak-iterations"] == 20.0 and metrics["fedleak-min-iterations"] == 1000.0
    verdicts = [metrics[k] for k in ("fedleak-leaks", "fedleak-no-leak-found", "fedleak-inconclusive")]
    assert sorted(verdicts) == [0.0, 0.0, 1.0] and metrics["fedleak-no-leak-found"] == 0.0
    assert metrics["fedleak-inconclusive"] == 1.0  # neither the 16 images nor their labels come back in 20 steps
    withheld = exchange(attack={"name": "ig", "iterations": 20}, budget_s=None, threshold=1e9)
    assert withheld.has_error() and "inconclusive" in withheld.error.reason
    assert "ran 20 of the 1000 iterations" in withheld.error.reason
    sent = exchange(attack={"name": "ig", "iterations": 20}, budget_s=None, threshold=1e9, send_inconclusive=True)
    assert not sent.has_error() and sent.content["metrics"]["fedleak-inconclusive"] == 1.0


def test_a_time_budget_that_fits_only_the_probe_gives_an_inconclusive_verdict(setting):
    """within_budget paced by a stand-in clock: each iteration 'takes' 10 s, so a 30 s budget fits the
    5-iteration probe only, and the probe's record — not a verdict of safety — comes back."""
    model, knowledge, _ = setting
    x, y = smooth(4, 2)
    payload = Client(model, Normalization(MEAN, STD)).update(ClientData(x, y))  # FedSGD: a cheap probe

    def run(attack):
        record = audit_update(payload, knowledge, attack, round=1, client="c", check=False)
        record.reconstruction.seconds = 10.0 * record.reconstruction.iterations
        return record

    record = within_budget(audit_attack({"name": "ig", "iterations": 1000}), 30.0, run)
    assert record.iterations_run == 5 and record.verdict == INCONCLUSIVE
    assert "ig ran 5 of the 1000 iterations" in record.verdict_reason
