"""Issue 21 regressions on the attack side and in the command line: the fishing attack's scale,
whole tables in pipes and logs, checkpoints' datasets, --prior, and the smaller first-hour defects."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedleak.attacks import fishing as fishing_module
from fedleak.attacks.base import Reconstruction
from fedleak.config import build_config
from fedleak.fl.client import normalize
from fedleak.fl.modifications import classifier_of
from fedleak.fl.server import server_flags
from fedleak.pipeline import run
from tests.test_cli import fedleak as cli
from tests.test_malicious_server import FACES, fishing_setup


def test_fishing_hands_its_inner_attack_the_update_of_a_batch_of_n(monkeypatch):
    """The isolated update is (1/N) Σ over the n target images; the inner attack must get (1/n) Σ —
    what a client with only those n images sends — or squared-L2 matching (ROG, DLG) fails."""
    batch = [0, *range(100, 107)]  # one face (class 0) among seven non-faces: n = 1, N = 8
    seen = {}

    class Spy:
        def run(self, payload, knowledge, seed=0, progress=False):
            seen["payload"] = payload
            n = payload.hyper.batch_size
            return Reconstruction(images=torch.zeros(n, *knowledge.input_shape), labels=knowledge.labels,
                                  matching_loss=0.0, restart_losses=[0.0], iterations=0, seconds=0.0, trace=[])

    monkeypatch.setattr(fishing_module, "build_attack", lambda name, settings=None: Spy())
    cfg = build_config(flags={**FACES, "data.index": batch, "client.batch_size": len(batch), "client.seed": 1,
                              **server_flags("fishing:target=0"), "threat": "G"})
    run(cfg)
    isolated = seen["payload"]
    assert isolated.hyper.batch_size == 1
    _, data, model = fishing_setup(batch)
    name, _ = classifier_of(model, 2)
    x, y = normalize(data.images(batch[:1]), data.mean, data.std), data.label_of(batch[:1])
    body = {n: p for n, p in model.named_parameters() if not n.startswith(name)}
    alone = torch.autograd.grad(F.cross_entropy(model(x), y), list(body.values()))
    for (key, own) in zip(body, alone):
        assert torch.allclose(isolated.update[key], own, rtol=2e-3, atol=1e-6), key


def _checkpoint(tmp_path, dataset: str, classes: int, channels: int = 1, size: int = 12):
    from fedleak.models import create_model
    from fedleak.models.checkpoint import CheckpointInfo, save_checkpoint

    model = create_model("lenet", classes, channels, (size, size), seed=0)
    info = CheckpointInfo("lenet", classes, channels, size, dataset=dataset, epochs=3, test_accuracy=0.875)
    return save_checkpoint(tmp_path / "trained.safetensors", model, info)


def test_a_checkpoint_is_attacked_on_its_own_dataset_and_the_report_names_it(tmp_path, monkeypatch, capsys):
    import json

    import yaml

    path = _checkpoint(tmp_path, "samples:faces", 2)
    out = tmp_path / "run"
    code, _, err = cli(monkeypatch, capsys, "attack", "--checkpoint", str(path), "--iterations", "2", "-q",
                       "--out", str(out))
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["name"] == "samples" and config["data"]["options"]["subset"] == "faces"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"]["dataset"] == "samples:faces" and metrics["checkpoint"]["test_accuracy"] == 0.875
    html = (out / "report.html").read_text()
    assert str(path) in html and "trained on samples:faces for 3 epochs, test accuracy 0.875" in html
    assert "the checkpoint was trained" not in err


def test_a_checkpoint_on_another_dataset_than_its_own_says_so(tmp_path, monkeypatch, capsys):
    path = _checkpoint(tmp_path, "cifar10", 10, channels=3)
    out = tmp_path / "run"
    code, _, err = cli(monkeypatch, capsys, "attack", "--checkpoint", str(path), "--dataset", "samples",
                       "--iterations", "2", "-q", "--out", str(out))
    assert code == 0, err
    assert "the checkpoint was trained on cifar10; this run attacks samples, as you asked" in err
    assert "trained on cifar10" in (out / "report.html").read_text()


def test_an_untrained_model_is_named_as_such_in_the_report(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, _ = cli(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                     "--iterations", "2", "-q", "--out", str(out))
    assert code == 0 and "untrained (random initialisation; no checkpoint)" in (out / "report.html").read_text()


def test_fishing_says_when_the_batch_has_no_image_of_the_fished_class():
    def notes(indices):
        cfg = build_config(flags={**FACES, "data.index": indices, "client.batch_size": 4, "client.seed": 1,
                                  **server_flags("fishing:target=0"), "attack.attack": {"iterations": 2}, "threat": "G"})
        return [h for h in run(cfg).hints if "fished class 0 has no image" in h]

    assert notes([100, 101, 102, 103]) and not notes([0, 101, 102, 103])


def test_prior_with_an_attack_that_takes_none_says_which_does(tmp_path, monkeypatch, capsys):
    prior = tmp_path / "prior.safetensors"
    prior.write_bytes(b"")
    for extra in ([], ["--attack", "dlg"]):
        code, _, err = cli(monkeypatch, capsys, "attack", "--prior", str(prior), *extra, "-q",
                           "--out", str(tmp_path / "run"))
        assert code == 2 and err.count("\n") == 1
        assert "used only by the rog attack" in err and "add --attack rog" in err, err
    assert not (tmp_path / "run").exists()


def test_train_prior_refuses_a_scale_its_images_cannot_take(tmp_path, monkeypatch, capsys):
    for scale, size, expect in (("64", "32", "more than ROG's largest, 8"), ("8", "4", "too large for 4×4")):
        out = tmp_path / f"p{scale}.safetensors"
        code, _, err = cli(monkeypatch, capsys, "train-prior", "--dataset", "samples", "--scale", scale,
                           "--image-size", size, "--epochs", "1", "-q", "--out", str(out))
        assert code == 2 and expect in err and err.count("\n") == 1, err
        assert not out.exists()


def test_tables_are_whole_in_pipes_and_logs(tmp_path, monkeypatch, capsys):
    """Output that is not a terminal (capsys, a pipe, a log) is never cut at 80 columns."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                         "--iterations", "2", "-q", "--out", str(tmp_path / "a" / ("long-name-" * 6)))
    assert code == 0, err
    assert "…" not in out and "matching loss" in out and "label accuracy" in out
    assert str(tmp_path / "a" / ("long-name-" * 6)) in out  # the title is one line
    sets = [a for o in ("data.name=samples", "model.name=lenet", "data.image_size=8", "attack.iterations=2")
            for a in ("--set", o)]
    folder = tmp_path / "sweep"
    code, _, err = cli(monkeypatch, capsys, "sweep", "-q", "--grid",
                       "client.defense=noise:snr_db=30,noise:snr_db=40", "--images", "0", *sets, "--out", str(folder))
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "runs", "list", str(folder))
    assert code == 0 and "…" not in out, out
    for cell in ("client.defense=noise:snr_db=30/image=0", "client.defense=noise:snr_db=40/image=0"):
        assert cell in out


def test_the_recognition_tables_show_the_no_leak_baseline_too():
    from fedleak.metrics.baselines import GUESSES
    from fedleak.store import RunRecord
    from fedleak.studies.recognition import rate_rows

    def record(i, psnr, guess):
        cls = {"recon_correct": [True], "original_correct": [True], "recon_confidence": [0.9]}
        baselines = {g: {"psnr": guess - k, "ssim": 0.1} for k, g in enumerate(GUESSES)}
        return RunRecord(f"k{i}", "stacking", f"B=1/{i}", {"batch": 1}, {}, 0,
                         {"psnr": psnr, "ssim": 0.2, "classification": cls, "baselines": baselines})

    [row] = rate_rows([record(0, 14.0, 12.0), record(1, 16.0, 10.0)], ["batch"])
    assert row["psnr_no_leak"] == 11.0 and row["ssim_no_leak"] == 0.1


def test_a_studys_long_lists_are_refused_before_its_plan_is_built(tmp_path, monkeypatch, capsys):
    from fedleak.studies.base import Study

    def never(self):
        raise AssertionError("the plan was built")

    monkeypatch.setattr(Study, "plan", never)  # every study's plan, wherever it is overridden
    for cls in list(Study.__subclasses__()):
        monkeypatch.setattr(cls, "plan", never, raising=False)
    settings = tmp_path / "big.yaml"
    settings.write_text("images: [" + ", ".join(map(str, range(3000))) + "]\nseeds: ["
                        + ", ".join(map(str, range(1000))) + "]\n")
    code, _, err = cli(monkeypatch, capsys, "study", "tv", "--config", str(settings), "-q",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "span up to" in err and "more than 2,000,000" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_an_oversized_study_json_is_refused_unread(tmp_path, monkeypatch, capsys):
    import fedleak.studies.folder as folder

    monkeypatch.setattr(folder, "MAX_META_BYTES", 1 << 20)
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "study.json").write_text('{"name": "tv", "pad": "' + "x" * (2 << 20) + '"}')
    (tmp_path / "st" / "results.sqlite").write_bytes(b"")
    code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path / "st"))
    assert code == 2 and "larger than 1 MiB" in err and err.count("\n") == 1, err


def test_two_runs_in_one_second_get_their_own_default_folders(tmp_path, monkeypatch, capsys):
    import fedleak.store.folders as folders

    class Frozen:
        @staticmethod
        def now():
            from datetime import datetime

            return datetime(2026, 12, 6, 21, 0, 0)

    monkeypatch.setattr(folders, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, _, err = cli(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                           "--iterations", "2", "-q")
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20261206-210000", "20261206-210000-2"]
