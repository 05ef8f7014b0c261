"""A malicious server: the imprint block (Robbing the Fed), class fishing (Wen et al.), the threat
model in configs, payloads and reports, and the secure-aggregation study — on 12-px faces."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from fedleak.attacks import build_attack
from fedleak.config import build_config
from fedleak.data import load_dataset
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.client import normalize
from fedleak.fl.modifications import Imprinted, classifier_of
from fedleak.fl.server import MODIFICATIONS, parse_modification, server_flags
from fedleak.metrics.recovery import is_exact, recovery_summary
from fedleak.modalities import build_target
from fedleak.pipeline import run
from fedleak.serving import apply_server
from tests.test_cli import fedleak as cli

FACES = {"data.name": "samples", "data.options": {"subset": "faces"}, "data.image_size": 12,
         "model.name": "convnet", "model.width": 0.125, "model.options": {"norm": "none"}}


def imprint_run(batch: int, clients: int = 1, defense: str | None = None, bins: int = 256, **flags):
    stages = [d for d in (defense, f"aggregate:clients={clients}" if clients > 1 else None) if d]
    cfg = build_config(flags={**FACES, "client.batch_size": batch, "client.defense": "+".join(stages) or None,
                              "client.seed": 3, **server_flags(f"imprint:bins={bins}"), "threat": "G", **flags})
    return run(cfg)


def exact_share(result) -> float:
    return recovery_summary([s.psnr for s in result.evaluation.images])["exact_fraction"]


def test_imprint_recovers_most_of_a_batch_exactly_from_fedsgd():
    result = imprint_run(16)
    assert result.config.attack.name == "imprint"  # the modification's attack by default
    assert len(set(result.truth.indices)) == 16
    assert exact_share(result) >= 0.75
    exact = [s for s in result.evaluation.images if is_exact(s.psnr)]
    matched = result.reconstruction.images[result.evaluation.order]
    for s in exact:  # bit-exact within float32: every pixel within rounding of the original
        assert (matched[s.position] - result.truth.images[s.position]).abs().max() < 1e-5


def test_imprint_separates_images_across_securely_aggregated_clients():
    result = imprint_run(4, clients=4)
    assert result.payload.hyper.clients == 4 and result.payload.hyper.observed_images == 16
    assert exact_share(result) >= 0.75


def test_imprint_is_exact_from_a_fedavg_step_and_under_clipping():
    assert exact_share(imprint_run(8, **{"client.protocol": "fedavg", "client.lr": 0.05})) >= 0.75
    # Scaling an update (clipping) or each image's gradient (DP-SGD's clipping) leaves the ratios intact.
    assert exact_share(imprint_run(8, defense="clip:c=0.001")) >= 0.75


def test_noise_lowers_the_exact_recovery_rate():
    clean, noisy = imprint_run(16), imprint_run(16, defense="noise:snr_db=20")
    assert exact_share(noisy) < exact_share(clean)
    assert exact_share(noisy) == 0.0


def test_the_payload_holds_the_modified_model_and_the_attacker_knows_it():
    result = imprint_run(4, bins=32)
    state, hyper = result.payload.model_state, result.payload.hyper
    assert "imprint.encoder.weight" in state and state["imprint.encoder.weight"].shape[0] == 32
    assert hyper.server.startswith("imprint:") and "bins=32" in hyper.server
    assert isinstance(result.target.model, Imprinted)
    # The modified model still classifies like the one it wraps (the block barely perturbs the input).
    x = normalize(result.truth.images, result.target.mean, result.target.std)
    model = result.target.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), model.body(x).argmax(1))


def test_an_honest_payload_has_no_imprint_to_read():
    cfg = build_config(flags={**FACES, "client.batch_size": 2, "attack.name": "imprint"})
    with pytest.raises(FedleakError, match="imprint block"):
        run(cfg)
    honest = run(build_config(flags={**FACES, "attack.name": "ig", "attack.iterations": 1}))
    assert honest.payload.hyper.server == "honest"


def test_server_config_is_validated_and_canonical():
    cfg = build_config(flags=server_flags("imprint:bins=8"))
    assert cfg.server.threat == "malicious"
    assert cfg.server.modification == parse_modification("imprint:bins=8").spec()
    assert parse_modification(cfg.server.modification).spec() == cfg.server.modification  # parses back
    assert build_config(flags={**server_flags("imprint:bins=8"), "attack.name": "ig"}).attack.name == "ig"
    assert build_config(flags=server_flags("honest")).server.modification is None
    assert set(MODIFICATIONS.names()) == {"imprint", "fishing", "trap"}
    for overrides, message in [
        (["server.threat=malicious"], "needs server.modification"),
        (["server.modification=imprint"], "honest server modifies nothing"),
        (["server.threat=malicious", "server.modification=imprint:bins=0"], "bins"),
        (["server.threat=malicious", "server.modification=imprint:bins=8,bogus=1"], "no setting 'bogus'"),
        (["server.threat=malicious", "server.modification=robbing"], "unknown server modification"),
        (["server.threat=evil"], "server.threat"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config(overrides=overrides)


def test_a_malicious_setting_shows_in_config_metrics_and_report(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(monkeypatch, capsys, "attack", "--server", "imprint:bins=64", "--threat", "G", "--dataset", "samples",
                            "--set", "data.options.subset=faces", "--image-size", "12", "--model", "lenet",
                            "-b", "4", "--defense", "aggregate:clients=2", "--set", "client.seed=3",  # fixed images
                            "--out", str(out), "-q")
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["server"]["threat"] == "malicious" and config["server"]["modification"].startswith("imprint:bins=64")
    assert config["attack"]["name"] == "imprint"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["server"] == config["server"]["modification"]
    assert metrics["recovery"]["images"] == 8 and metrics["recovery"]["exact_images"] >= 4
    assert set(metrics["recovery"]["psnr_distribution"]) == {"min", "q1", "median", "q3", "max"}
    html = (out / "report.html").read_text()
    assert "MALICIOUS server: imprint:bins=64" in html
    assert "exact" in stdout
    code, _, err = cli(monkeypatch, capsys, "attack", "--server", "imprint:bins=-3", "--out", str(tmp_path / "x"))
    assert code == 2 and err.startswith("fedleak: error: config server.modification") and err.count("\n") == 1


def fishing_setup(indices, target=0):
    cfg = build_config(flags={**FACES, "data.index": indices, **server_flags(f"fishing:target={target}")})
    data = load_dataset("samples", subset="faces", image_size=12)
    model = apply_server(cfg, build_target(cfg, data), data, load_dataset).model.eval()
    return cfg, data, model


def test_class_fishing_isolates_the_target_images_gradient():
    batch = [0, *range(100, 107)]  # one face (class 0) among seven non-faces
    _, data, model = fishing_setup(batch)
    name, head = classifier_of(model, 2)
    x, y = normalize(data.images(batch), data.mean, data.std), data.label_of(batch)
    body = [p for n, p in model.named_parameters() if not n.startswith(name)]

    def gradient(xx, yy):
        return torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(model(xx), yy), body)])

    whole, alone = gradient(x, y), gradient(x[:1], y[:1])
    assert F.cosine_similarity(whole, alone, dim=0) > 0.9999
    assert torch.allclose(whole * len(batch), alone, rtol=1e-3, atol=1e-7)
    with pytest.raises(ConfigError, match="out of range"):
        fishing_setup([0], target=5)


def test_the_fishing_attack_runs_ig_on_the_isolated_gradient():
    cfg = build_config(flags={**FACES, "data.index": [0, 100, 101, 102], "client.batch_size": 4,
                              **server_flags("fishing:target=0"), "attack.attack": {"iterations": 3}, "threat": "G"})
    assert cfg.attack.name == "fishing"
    result = run(cfg)
    assert result.reconstruction.images.shape == result.truth.images.shape
    assert {"isolated_images": 1, "target_class": 0} in result.reconstruction.trace
    assert sorted(result.reconstruction.labels.tolist()).count(0) >= 1
    imprinted = imprint_run(2, bins=8)
    with pytest.raises(FedleakError, match="fishing server"):
        build_attack("fishing").run(imprinted.payload, _knowledge_of(imprinted))


def _knowledge_of(result):
    from fedleak.attacks import AttackerKnowledge

    return AttackerKnowledge(result.target.model, result.dataset.image_shape, result.dataset.num_classes,
                             result.target.mean, result.target.std)


def test_secure_aggregation_study_runs_and_tabulates(tmp_path):
    from fedleak.studies import build_study
    from tests.studying import run_study

    overrides = ["dataset=samples", "image_size=12", "width=0.125",
                 "batch_sizes=[4]", "clients=[1,2]", "defenses=[none,noise:snr_db=10]", "honest_attack.iterations=2",
                 "fishing_attack.iterations=2", "honest_max_images=4", "fishing_max_images=8", "dataset_images=10",
                 "bins_per_image=8"]
    study = build_study("secure-aggregation", "cpu", overrides=overrides)
    planned = study.plan()
    servers = {(r.params["server"], r.params["defense"], r.params["clients"]) for r in planned}
    assert ("honest", "none", 2) not in servers  # 8 images: beyond the honest attack's budget of 4
    assert ("imprint", "noise:snr_db=10", 2) in servers and ("fishing", "none", 2) in servers
    outcome = run_study(study, "cpu", tmp_path / "study", progress=False)
    assert outcome.ran == len(planned)
    rows = json.loads((tmp_path / "study" / "table.json").read_text())
    rate = {(r["server"], r["defense"], r["clients"]): r["exact_rate"] for r in rows}
    assert rate[("imprint", "none", 1)] >= 0.5 and rate[("imprint", "none", 2)] >= 0.5
    assert rate[("honest", "none", 1)] == 0.0 and rate[("imprint", "noise:snr_db=10", 1)] == 0.0
    assert all(r["images"] == r["runs"] * r["batch"] * r["clients"] for r in rows)
