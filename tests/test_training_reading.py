"""What an audit reads of a client's training from a Flower train config, the app's run config and
``known=``: every setting with its source, torch.optim's own defaults where nothing says."""

import pytest
import torch.nn as nn

pytest.importorskip("flwr")

from fedleak.errors import FedleakError  # noqa: E402
from fedleak.integrations.flower import TrainKeys  # noqa: E402
from fedleak.integrations.flower.records import DEFAULT_KEYS, read_training  # noqa: E402


def net():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_every_setting_says_where_it_came_from():
    reading = read_training({"lr": 0.05, "optimizer": "adamw"}, 10, net(), known={"beta1": 0.8},
                            run_config={"local-epochs": 2, "batch-size": 4, "beta1": 0.5})
    s = reading.sources
    assert s["lr"] == "train config 'lr'" and s["beta1"] == "known 'beta1'"  # known= before the run config
    assert s["local_steps"] == "run config 'local-epochs'" and s["local_batch_size"] == "run config 'batch-size'"
    assert s["batch_size"] == "reply" and s["momentum"] == "unused" and s["nesterov"] == "unused"
    assert {"weight_decay", "beta2", "eps", "shuffle", "drop_last"} <= set(reading.assumed)
    h = reading.hyper
    assert (h.optimizer, h.beta1, h.local_steps, h.local_batch_size) == ("adamw", 0.8, 6, 4)
    assert h.weight_decay == 0.01  # AdamW's own default, not SGD's 0
    assert h.order == "private"  # no seed sent, several minibatches: the client's own order, said so
    assert any("own order" in a for a in reading.assumptions)


def test_an_app_that_names_its_keys_its_own_way():
    keys = TrainKeys({"local-epochs": "epochs", "lr": "learning-rate"}, momentum="mom")
    assert (keys.epochs, keys.lr, keys.momentum, keys.steps) == ("epochs", "learning-rate", "mom", "local-steps")
    reading = read_training({"learning-rate": 0.1, "epochs": 3, "mom": 0.9, "batch-size": 5, "shuffle-seed": 2},
                            10, net(), keys)
    assert (reading.hyper.local_steps, reading.hyper.momentum, reading.hyper.order) == (6, 0.9, "seeded")
    with pytest.raises(FedleakError, match="no train-config key"):
        TrainKeys({"local-epoch": "epochs"})
    with pytest.raises(FedleakError, match="no setting"):
        TrainKeys(epoch="epochs")
    assert TrainKeys() == TrainKeys({key: key for key in DEFAULT_KEYS.values()}) != keys


@pytest.mark.parametrize("config, message", [
    ({"lr": 0.1, "optimizer": "adm"}, "did you mean 'adam'"),
    ({"lr": 0.1, "nesterov": "yes"}, "'nesterov' must be true or false"),
    ({"lr": 0.1, "optimizer": "adam", "beta2": 1.0}, "'beta2' must be below 1"),
    ({"lr": 0.1, "nesterov": True}, "Nesterov"),
    ({"lr": 0.1, "dampening": 1.5}, "'dampening' must be at most 1"),
    ({"lr": 0.1, "local-steps": 0}, "'local-steps' must be a whole number"),
])
def test_bad_settings_are_one_clear_line(config, message):
    with pytest.raises(FedleakError, match=message):
        read_training(config, 3, net())
