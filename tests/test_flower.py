"""Auditing Flower federations: the LeakageAudit strategy wrapper, the client-side leakage gate, the
obfuscation mod and the results folder they write. Most tests drive the strategy in this process with
a stand-in grid that runs the ClientApp on each node in turn (Flower's own ClientApp, messages and
records); one runs the real simulation engine (``flwr.simulation.run_simulation`` on Ray, 2 CPUs)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import ErrorCode
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.audit import AuditAttack, audit_attack
from fedleak.verdicts import minimum_iterations
from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.integrations.flower import (LeakageAudit, SharedBatches, TrainKeys, leakage_gate, obfuscation_mod,
                                        record_batch)
from fedleak.integrations.flower.records import public_hyperparameters
from fedleak.store import ResultsDB

# --- a tiny Flower app: a plain PyTorch client (the simulation engine's workers import it from here) ----------

SHAPE = (3, 8, 8)
CLASSES = 3
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EXAMPLES = 2  # per client
TRAIN = {"lr": 0.1, "local-epochs": 1, "batch-size": 1, "momentum": 0.9, "weight-decay": 1e-3, "shuffle-seed": 5,
         "model-mode": "train"}
ATTACK = {"name": "ig", "iterations": 400}


def tiny_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Sigmoid(), nn.Flatten(),
                             nn.Linear(6 * 8 * 8, CLASSES))


def client_data(partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (total variation helps, as with photographs), distinct labels."""
    g = torch.Generator().manual_seed(100 + partition)
    coarse = torch.rand(EXAMPLES, 3, 4, 4, generator=g)
    images = F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.tensor([(partition + k) % CLASSES for k in range(EXAMPLES)])


def train_round(message: Message, context: Context) -> Message:
    """What a Flower user writes: a DataLoader over the node's examples, torch.optim.SGD, the state dict back."""
    config = message.content["config"]
    model = tiny_net()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    images, labels = client_data(int(context.node_config["partition-id"]))
    data = TensorDataset((images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1), labels)
    shuffled = "shuffle-seed" in config  # without a public seed: the examples in their own order
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=shuffled, seed=int(config.get("shuffle-seed", 0)))
    loader = DataLoader(data, batch_size=int(config["batch-size"]), sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config.get("momentum", 0.0)),
                                weight_decay=float(config.get("weight-decay", 0.0)))
    model.train()
    for epoch in range(int(config["local-epochs"])):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    record_batch(context, message, images, labels)
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": len(labels)})}), reply_to=message)


def client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    app = ClientApp(mods=list(mods))
    app.train()(train_round)
    return app


def gate(**kw) -> Mod:
    return leakage_gate(tiny_net, num_classes=CLASSES, mean=MEAN, std=STD,
                        **{"attack": {"name": "ig", "iterations": 30}, "budget_s": 60.0, **kw})


def audit(strategy, out, **kw) -> LeakageAudit:
    return LeakageAudit(strategy, model=tiny_net, input_shape=SHAPE, num_classes=CLASSES, mean=MEAN, std=STD,
                        out=out, **{"attack": ATTACK, "strict": True, "lpips": (), "workers": 0, **kw})


def initial() -> ArrayRecord:
    return ArrayRecord(tiny_net().state_dict())


# --- an in-process stand-in for Flower's grid ------------------------------------------------------------------

class LocalGrid:
    """Runs the ClientApp on each node in turn, in this process: what the simulation engine does, minus Ray."""

    def __init__(self, app: ClientApp, nodes: int = 2) -> None:
        self.app = app
        self.contexts = {1000 + k: Context(run_id=7, node_id=1000 + k, node_config={"partition-id": k},
                                           state=RecordDict(), run_config={}) for k in range(nodes)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """A ServerApp process has a task identity (the simulation engine sets it); give this one one."""
    for name, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def federate(strategy, app: ClientApp, rounds: int = 2, nodes: int = 2, config=None):
    grid = LocalGrid(app, nodes)
    return strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds,
                          train_config=ConfigRecord(dict(config or TRAIN)))


def records(out):
    with ResultsDB(out / "results.sqlite", create=False) as db:
        return sorted(db.records(), key=lambda r: (r.metrics["round"], r.metrics["client"]))


def same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a) == list(b) and all((a[k].numpy() == b[k].numpy()).all() for k in a)


# --- the audit strategy --------------------------------------------------------------------------------------

def test_audit_writes_one_record_per_audited_client_and_round_and_the_study_tools_read_it(tmp_path, capsys):
    from fedleak.cli import main

    out = tmp_path / "audit"
    federate(audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1, 3], attack={"name": "ig", "iterations": 20}),
             client_app(), rounds=3)
    rows = records(out)
    assert [(r.metrics["round"], r.metrics["client"]) for r in rows] == [(1, "1000"), (1, "1001"), (3, "1000"), (3, "1001")]
    for r in rows:
        m = r.metrics
        assert m["matching_loss"] >= 0 and len(m["recovered_labels"]) == EXAMPLES and 0 <= m["risk"] <= 1
        assert m["hyper"]["local_steps"] == 2 and m["hyper"]["momentum"] == 0.9 and "psnr" not in m  # no truth given
        assert (out / r.artifacts["reconstruction"]).is_file() and "original" not in r.artifacts
    meta = json.loads((out / "study.json").read_text())
    assert meta["study"] == "flower-audit" and len(meta["settings"]["cells"]) == 4
    main(["runs", "list", str(out)])
    main(["runs", "export", str(out)])
    main(["report", str(out)])
    text = capsys.readouterr().out
    assert "flower-audit" in text and "risk" in text
    page = (out / "report.html").read_text()
    assert "Risk per round and client" in page and "What the server reconstructed" in page
    assert page.count("data:image/png;base64,") >= 2 and "4 of 4 audited updates finished" in page


def test_every_and_clients_choose_what_is_audited(tmp_path):
    out = tmp_path / "audit"
    federate(audit(FedAvg(fraction_evaluate=0.0), out, every=2, clients=1, attack={"name": "ig", "iterations": 5}),
             client_app(), rounds=3)
    audited = [(r.metrics["round"], r.metrics["client"]) for r in records(out)]
    assert [r for r, _ in audited] == [1, 3] and audited[0][1] == audited[1][1]  # one client, the same each round
    chosen = json.loads((out / "study.json").read_text())["settings"]["selection"]["chosen"]
    node = int(audited[0][1])
    assert chosen == {"1": [{"node": node, "partition": None}], "3": [{"node": node, "partition": None}]}


def test_aggregated_model_is_bit_identical_with_and_without_the_audit(tmp_path):
    app = client_app()
    plain = federate(FedAvg(fraction_evaluate=0.0), app)
    audited = federate(audit(FedAvg(fraction_evaluate=0.0), tmp_path / "a", evaluation=SharedBatches(tmp_path / "s"),
                             attack={"name": "ig", "iterations": 5}), client_app([SharedBatches(tmp_path / "s").mod()]))
    assert same_arrays(plain.arrays, audited.arrays)
    assert not same_arrays(plain.arrays, initial())


def test_evaluation_hook_scores_beside_the_baseline_and_never_reaches_the_attack(tmp_path, monkeypatch):
    shared = SharedBatches(tmp_path / "shared")
    events, seen = [], []
    truth = {k: client_data(k)[0] for k in range(2)}
    build = AuditAttack.build

    def spy_build(self, **overrides):
        attack = build(self, **overrides)
        run = attack.run

        def spied(payload, knowledge, seed=0, progress=False):
            seen.extend([*payload.model_state.values(), *payload.update.values(), *payload.buffers.values(),
                         *(p for p in knowledge.architecture.state_dict().values())])
            result = run(payload, knowledge, seed=seed, progress=progress)
            events.append("attack returned")
            return result

        attack.run = spied
        return attack

    def hook(run_id, server_round, node_id):
        events.append("hook asked")
        return shared(run_id, server_round, node_id)

    hook.discard = shared.discard  # told about the batches of updates it does not audit (round 2)
    monkeypatch.setattr(AuditAttack, "build", spy_build)
    out = tmp_path / "audit"
    federate(audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], evaluation=hook), client_app([shared.mod()]))
    assert events == ["attack returned", "hook asked"] * 2  # asked for the truth only once each attack is over
    for tensor in seen:  # nothing the attack was handed holds a private image
        for images in truth.values():
            assert tensor.shape != images.shape or not torch.allclose(tensor.float(), images)
    for r in records(out):
        m = r.metrics
        assert m["psnr"] > m["psnr_mean_colour"]  # beats what a guess of each image's mean colour scores
        assert m["label_accuracy"] == 1.0 and (out / r.artifacts["original"]).is_file()
    assert not list((tmp_path / "shared").glob("*.safetensors"))  # each shared batch is read once, then removed
    assert "PSNR against risk" in (out / "report.html").read_text()


def test_aggregate_view_attacks_the_mean_of_all_clients_as_under_secure_aggregation(tmp_path):
    shared = SharedBatches(tmp_path / "shared")
    out = tmp_path / "audit"
    strategy = audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], view="aggregate", evaluation=shared,
                     attack={"name": "ig", "iterations": 20})
    federate(strategy, client_app([shared.mod()]))
    (record,) = strategy.records
    assert record.client == "aggregate" and record.hyper.clients == 2 and record.hyper.observed_images == 4
    assert record.hyper.defense == "aggregate:clients=2" and record.evaluation is not None  # all 4 images at risk
    assert record.reconstruction.images.shape == (4, *SHAPE)
    with pytest.raises(ConfigError, match="clients= does not apply"):
        audit(FedAvg(), tmp_path / "b", view="aggregate", clients=1)


def test_unsent_settings_are_assumed_and_reported(tmp_path):
    out = tmp_path / "audit"
    config = {k: v for k, v in TRAIN.items() if k not in ("momentum", "shuffle-seed")}
    strategy = audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], attack={"name": "ig", "iterations": 5},
                     known={"fedleak-defense": "none"})
    federate(strategy, client_app(), config=config)
    (first, _) = strategy.records
    assert any("'momentum': 0" in a for a in first.assumptions)
    assert any("'shuffle-seed'" in a for a in first.assumptions)
    assert not any("fedleak-defense" in a for a in first.assumptions)  # known from elsewhere: no assumption
    assert "Assumed (not sent by the server): &#39;momentum&#39;" in (out / "report.html").read_text()


def test_public_hyperparameters_from_the_train_config():
    model = tiny_net()
    hyper, assumed = public_hyperparameters({"lr": 0.05, "local-epochs": 3, "batch-size": 4, "momentum": 0.9,
                                             "weight-decay": 0.0, "shuffle-seed": 1, "model-mode": "eval",
                                             "fedleak-defense": "none", "optimizer": "sgd", "nesterov": False, "dampening": 0,
                                             "drop-last": False}, 10, model)
    assert (hyper.local_steps, hyper.local_batch_size, hyper.batch_size, hyper.model_mode) == (9, 4, 10, "eval")
    assert assumed == []
    hyper, assumed = public_hyperparameters({"lr": 0.05}, 3, model, known={"local-steps": 2})
    assert hyper.local_steps == 2 and hyper.local_batch_size == 3
    assert [a.split(":")[0] for a in assumed] == ["'optimizer'", "'drop-last'", "'momentum'", "'dampening'", "'nesterov'",
                                                  "'weight-decay'", "'batch-size'", "'model-mode'", "'fedleak-defense'"]
    with pytest.raises(FedleakError, match="learning rate 'lr'"):
        public_hyperparameters({}, 3, model)
    with pytest.raises(FedleakError, match="'batch-size' must be a whole number"):
        public_hyperparameters({"lr": 0.1, "batch-size": 1.5}, 3, model)


def test_the_audit_reads_the_attack_and_knowledge_sections_of_a_run_config(tmp_path):
    config = tmp_path / "audit.yaml"
    config.write_text("attack:\n  name: ig-limchan\n  iterations: 7\nknowledge:\n  labels: false\n")
    chosen = audit_attack(config)
    assert chosen.resolved()["iterations"] == 7 and chosen.resolved()["tv"] == 0.1  # the preset's α, then the file's
    assert audit_attack({"name": "rog", "scale": 4}).resolved()["scale"] == 4
    assert audit_attack(None).resolved()["iterations"] == minimum_iterations("ig") == 1000
    (tmp_path / "more.yaml").write_text("attack:\n  name: ig\nclient:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="only attack and knowledge"):
        audit_attack(tmp_path / "more.yaml")


def test_bad_audit_settings_fail_before_the_federation(tmp_path):
    with pytest.raises(ConfigError, match="knowledge.labels"):
        audit_attack({"attack": {"name": "ig"}, "knowledge": {"labels": True}})
    with pytest.raises(ConfigError, match="unknown config key 'attack.iteration'"):
        audit(FedAvg(), tmp_path / "a", attack={"name": "ig", "iteration": 3})
    with pytest.raises(ConfigError, match="not both"):
        audit(FedAvg(), tmp_path / "a", rounds=[1], every=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert audit(FedAvg(), tmp_path / "busy", overwrite=True).out == tmp_path / "busy" / "audit-2"  # never replaced
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        audit(FedAvg(), tmp_path / "file")
    with pytest.raises(FedleakError, match="logits"):
        LeakageAudit(FedAvg(), model=tiny_net, input_shape=SHAPE, num_classes=5, mean=MEAN, std=STD, out=tmp_path / "c")


def test_an_earlier_audit_is_replaced_only_when_asked_and_a_rerun_goes_on_in_a_sub_folder(tmp_path, monkeypatch):
    out = tmp_path / "audit"
    federate(audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], attack={"name": "ig", "iterations": 2}),
             client_app(), rounds=1)
    monkeypatch.chdir(tmp_path)  # a relative out is resolved here, where the strategy is built
    rerun = audit(FedAvg(fraction_evaluate=0.0), "audit", rounds=[1], attack={"name": "ig", "iterations": 2})
    assert rerun.out == out / "audit-2" and rerun.out.is_absolute()
    federate(rerun, client_app(), rounds=1)  # the federation runs: its audit is the sub-folder's
    assert len(records(out)) == 2 and len(records(out / "audit-2")) == 2
    assert audit(FedAvg(), out).out == out / "audit-3"
    audit(FedAvg(), out, overwrite=True)
    assert not (out / "runs").exists() and json.loads((out / "study.json").read_text())["settings"]["cells"] == []


def test_an_audit_that_fails_is_skipped_and_the_federation_goes_on(tmp_path):
    keys = TrainKeys(lr="learning-rate")  # the server's config names it "lr": the audit cannot find it
    lenient = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "a", strict=False, keys=keys,
                    attack={"name": "ig", "iterations": 2})
    result = federate(lenient, client_app(), rounds=1)
    assert lenient.records == [] and not same_arrays(result.arrays, initial())  # the round was aggregated
    strict = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "b", keys=keys, attack={"name": "ig", "iterations": 2})
    with pytest.raises(FedleakError, match="no learning rate 'learning-rate'"):
        federate(strict, client_app(), rounds=1)


# --- the client side: the gate and the obfuscation mod ----------------------------------------------------------

def one_exchange(app: ClientApp, config=None):
    """A train instruction to node 1000 and its reply through ``app``."""
    grid = LocalGrid(app, 1)
    message = Message(RecordDict({"arrays": initial(), "config": ConfigRecord(dict(config or TRAIN) | {"server-round": 1})}),
                      dst_node_id=1000, message_type=MessageType.TRAIN)
    return message, grid.send_and_receive([message])[0]


def test_gate_attaches_its_scores_and_refuses_above_a_threshold():
    _, reply = one_exchange(client_app([gate()]))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == EXAMPLES
    for key in ("fedleak-psnr", "fedleak-psnr-gain", "fedleak-ssim", "fedleak-label-accuracy", "fedleak-risk",
                "fedleak-attack-seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["fedleak-psnr"] > 0
    _, refused = one_exchange(client_app([gate(threshold=0.0)]))
    assert refused.has_error() and not refused.has_content()
    assert refused.error.code == ErrorCode.MOD_FAILED_PRECONDITION and "threshold 0" in refused.error.reason


def test_gate_fails_closed_without_a_batch_and_lets_other_messages_pass():
    def forgetful(message, context):  # trains nothing and records no batch
        return Message(RecordDict({"arrays": message.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=message)

    app = ClientApp(mods=[gate()])
    app.train()(forgetful)
    app.evaluate()(lambda m, c: Message(RecordDict({"metrics": MetricRecord({"acc": 0.5})}), reply_to=m))
    _, reply = one_exchange(app)
    assert reply.has_error() and "recorded no batch" in reply.error.reason
    evaluate = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1000, message_type=MessageType.EVALUATE)
    assert LocalGrid(app, 1).send_and_receive([evaluate])[0].content["metrics"]["acc"] == 0.5


def test_refused_updates_are_left_out_of_the_aggregate(tmp_path):
    strategy = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "a", attack={"name": "ig", "iterations": 2})
    result = federate(strategy, client_app([gate(threshold=0.0)]), rounds=1)
    assert len(result.arrays) == 0  # nothing was aggregated: the global model stayed as it was
    assert strategy.records == []


def test_obfuscation_mod_sparsifies_the_update_and_the_audit_reads_the_announced_defense(tmp_path):
    config = TRAIN | {"fedleak-defense": "topk:sparsity=0.9"}
    message, reply = one_exchange(client_app([obfuscation_mod(tiny_net)]), config)
    sent, back = message.content["arrays"], reply.content["arrays"]
    for name, p in tiny_net().named_parameters():
        delta = sent[name].numpy() - back[name].numpy()
        assert (delta != 0).sum() <= -(-p.numel() // 10), name  # top 10 % kept
    strategy = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "a", rounds=[1], attack={"name": "ig", "iterations": 2})
    federate(strategy, client_app([obfuscation_mod(tiny_net)]), rounds=1, config=config)
    spec = parse_defense("topk:sparsity=0.9").spec  # the canonical spec, every setting spelled out
    assert all(r.hyper.defense == spec for r in strategy.records) and len(strategy.records) == 2
    with pytest.raises(ConfigError, match="only transform the update"):
        obfuscation_mod(tiny_net, "dpsgd:clip=1,noise_multiplier=1")


# --- the real simulation engine ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """One run of Flower's simulation engine (Ray, 2 CPUs, 2 nodes): plain FedAvg for two rounds, then
    the same federation under the audit (attacking in a spawned worker process, as by default), with
    the gate and the shared-batch mod on the clients."""
    from flwr.simulation import run_simulation

    tmp = tmp_path_factory.mktemp("simulation")
    shared = SharedBatches(tmp / "shared")
    results = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        results["plain"] = FedAvg(fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(), num_rounds=2,
                                                               train_config=ConfigRecord(dict(TRAIN)))
        results["strategy"] = audit(FedAvg(fraction_evaluate=0.0), tmp / "audit", evaluation=shared, workers=1)
        results["audited"] = results["strategy"].start(grid=grid, initial_arrays=initial(), num_rounds=2,
                                                       train_config=ConfigRecord(dict(TRAIN)))

    start = time.perf_counter()
    try:
        run_simulation(server, client_app([gate(), shared.mod()]), num_supernodes=2,
                       backend_config={"init_args": {"num_cpus": 2}, "client_resources": {"num_cpus": 1}})
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    results["seconds"] = time.perf_counter() - start
    return results, tmp / "audit"


def test_simulation_audits_every_client_and_round_with_matching_loss_and_labels(simulation):
    results, out = simulation
    rows = records(out)
    assert sorted((r.metrics["round"]) for r in rows) == [1, 1, 2, 2]
    assert len({r.metrics["client"] for r in rows}) == 2
    for r in rows:
        assert r.metrics["matching_loss"] >= 0 and len(r.metrics["recovered_labels"]) == EXAMPLES
        assert "psnr" in r.metrics and "psnr_mean_colour" in r.metrics
    for r in rows:
        if r.metrics["round"] == 1:  # the first round's updates give the images away
            assert r.metrics["psnr"] > r.metrics["psnr_mean_colour"]


def test_simulation_model_is_bit_identical_with_and_without_the_audit(simulation):
    results, _ = simulation
    assert same_arrays(results["plain"].arrays, results["audited"].arrays)


def test_simulation_clients_report_the_gates_scores(simulation):
    results, _ = simulation
    for rounds in (results["plain"].train_metrics_clientapp, results["audited"].train_metrics_clientapp):
        assert set(rounds) == {1, 2} and all("fedleak-psnr" in m and m["fedleak-psnr"] > 0 for m in rounds.values())
