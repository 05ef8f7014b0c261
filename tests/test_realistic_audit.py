"""The Flower audit against realistic clients (issue 23): hundreds of examples per client, a shuffling
``DataLoader``, minibatches of 32, SGD with momentum and weight decay, two local epochs, the training
settings only in the app's run config under the app's own key names. Every audited update ends in a
verdict that names what it rests on; the audit reads each setting from where the app put it and says
so; a client whose order the server cannot follow, or whose training the audit was not told, is never
``no leak found``; the label histogram and the malicious-server figure stand in every record."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.attacks.label_counts import histogram_error, label_histogram
from fedleak.errors import ConfigError
from fedleak.integrations.flower import LeakageAudit, SharedBatches, TrainKeys, record_batch
from fedleak.leaks import IMPRINT_BINS
from fedleak.verdicts import INCONCLUSIVE, NO_LEAK, VERDICTS
from tests.test_flower import LocalGrid, task_identity

assert task_identity  # the autouse fixture of test_flower: Messages are made in a ServerApp-like process
SHAPE, CLASSES, EXAMPLES = (3, 8, 8), 4, 256
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# The app's run config, its own key names (as an app written by others has them)
RUN = {"client-lr": 0.05, "epochs-per-round": 2, "minibatch": 32, "sgd-momentum": 0.9, "l2": 5e-4}
KEYS = TrainKeys(lr="client-lr", epochs="epochs-per-round", batch_size="minibatch", momentum="sgd-momentum",
                 weight_decay="l2")


def net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, CLASSES))


def client_data(partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A skewed class mix (half the examples class ``partition``), images that depend on the class."""
    g = torch.Generator().manual_seed(partition)
    labels = torch.cat([torch.full((EXAMPLES // 2,), partition % CLASSES),
                        torch.randint(0, CLASSES, (EXAMPLES - EXAMPLES // 2,), generator=g)])
    labels = labels[torch.randperm(EXAMPLES, generator=g)]
    images = (torch.rand(EXAMPLES, *SHAPE, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / (2 * CLASSES)).clamp(0, 1)
    return images, labels


def make_client(order: str, mods: list):
    """The app's ClientApp: reads its settings from its run config; ``order`` is ``private``
    (``DataLoader(shuffle=True)``) or ``public`` (a ``DistributedSampler`` seeded by the run config)."""
    def train(message: Message, context: Context) -> Message:
        cfg = context.run_config
        model = net()
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        images, labels = client_data(int(context.node_config["partition-id"]))
        data = TensorDataset((images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1), labels)
        if order == "public":
            sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=int(cfg["shuffle-seed"]))
            loader = DataLoader(data, batch_size=int(cfg["minibatch"]), sampler=sampler)
        else:
            sampler = None
            loader = DataLoader(data, batch_size=int(cfg["minibatch"]), shuffle=True)
        opt = torch.optim.SGD(model.parameters(), lr=float(cfg["client-lr"]), momentum=float(cfg["sgd-momentum"]),
                              weight_decay=float(cfg["l2"]))
        model.train()
        for epoch in range(int(cfg["epochs-per-round"])):
            if sampler is not None:
                sampler.set_epoch(epoch)
            for x, y in loader:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        record_batch(context, message, images, labels)
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(labels)})}), reply_to=message)

    app = ClientApp(mods=mods)
    app.train()(train)
    return app


def federate(tmp_path, name: str, run: dict, order: str, declare: dict | None, evaluation: bool = True,
             sent: dict | None = None):
    """One round of two clients; the audit is given ``declare`` as the app's run config and the
    train config ``sent``; with ``evaluation`` the clients share their batch for scoring."""
    shared = SharedBatches(tmp_path / f"shared-{name}")
    app = make_client(order, [shared.mod()] if evaluation else [])
    strategy = LeakageAudit(FedAvg(fraction_evaluate=0.0), model=net, input_shape=SHAPE, num_classes=CLASSES,
                            mean=MEAN, std=STD, out=tmp_path / name, attack={"name": "ig", "iterations": 3},
                            keys=KEYS, run_config=declare, workers=0, strict=True, lpips=(),
                            evaluation=shared if evaluation else None, public=client_data(7))
    grid = LocalGrid(app, 2)
    for context in grid.contexts.values():
        context.run_config.update(run)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=1,
                   train_config=ConfigRecord(dict(sent or {})))
    return sorted(strategy.records, key=lambda r: r.client)


def test_a_realistic_federation_ends_in_a_verdict_per_update_and_reads_the_run_config(tmp_path):
    run = RUN | {"shuffle-seed": 11}
    known_order = federate(tmp_path, "public", run, "public", run)
    assert len(known_order) == 2
    for record in known_order:
        assert record.verdict in VERDICTS and record.verdict_reason
        assert record.sources["epochs"] == "run config 'epochs-per-round'"
        assert record.sources["momentum"] == "run config 'sgd-momentum'"
        assert record.hyper.local_steps == 2 * EXAMPLES // 32 and record.hyper.momentum == 0.9
        assert record.truth_fit is not None and record.truth_fit >= 0.999  # the declared training is the client's
        assert record.verified
        assert record.verdict != NO_LEAK and "3 of the 1000 iterations" in record.verdict_reason  # under budget
        assert record.iterations_run == 3 and record.metrics()["iterations_run"] == 3
        # what else leaks: the class mix, and what a malicious server would recover
        images, labels = client_data(int(record.client) - 1000)
        counts = torch.tensor(record.label_counts.counts)
        true = label_histogram(labels, CLASSES)
        assert int(counts.sum()) == EXAMPLES and record.label_counts.true == true.tolist()
        assert record.label_counts.error == histogram_error(counts, true)
        uniform = histogram_error(torch.full((CLASSES,), EXAMPLES // CLASSES), true)
        assert record.label_counts.error < uniform  # better than a guess of a balanced client (CIFAR-10: benchmarks/)
        assert int(counts.argmax()) == int(true.argmax())  # the client's majority class leaks
        assert math.isclose(record.malicious.share, (IMPRINT_BINS / (IMPRINT_BINS + 1)) ** EXAMPLES, rel_tol=1e-9)
        assert record.malicious.bins_for_half > IMPRINT_BINS  # 256 examples outgrow 128 bins


def test_private_order_and_undeclared_training_are_never_no_leak_found(tmp_path):
    private = federate(tmp_path, "private", RUN, "private", RUN)
    for record in private:  # the client's own batch does not explain the update in the server's guessed order
        assert record.verdict == INCONCLUSIVE and record.truth_fit < 0.999
        assert record.sources["shuffle"] == "assumed" and "mis-specified" in record.verdict_reason
    undeclared = federate(tmp_path, "undeclared", RUN, "private", None, evaluation=False, sent={"client-lr": 0.05})
    for record in undeclared:  # the run config not given: one full-batch step assumed, the norms say otherwise
        assert record.sources["epochs"] == "assumed" and record.hyper.local_steps == 1
        assert record.verdict == INCONCLUSIVE and not record.specification.consistent
        assert "mis-specified" in record.verdict_reason
        assert math.isnan(record.risk)  # no risk number from a simulation that is not the client's


def test_public_images_the_model_cannot_take_are_refused_when_the_strategy_is_built(tmp_path):
    for bad, said in ((torch.rand(4, 3, 16, 16), "public= must be N×3×8×8"), (torch.rand(4, *SHAPE) + 1, "[0, 1]"),
                      ((torch.rand(4, *SHAPE), torch.zeros(3)), "one class index per image")):
        with pytest.raises(ConfigError, match=said.replace("[", r"\[").replace("]", r"\]")):
            LeakageAudit(FedAvg(), model=net, input_shape=SHAPE, num_classes=CLASSES, mean=MEAN, std=STD,
                         out=tmp_path / "x", public=bad, workers=0)
