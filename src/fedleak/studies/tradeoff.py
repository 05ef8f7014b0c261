"""Privacy against utility under additive noise (``dp-tradeoff``): for each SNR, the test accuracy after
FedAvg training with that noise on every client update, beside how well an attack reconstructs one
client's images from an update with the same noise. The ``fl-train`` run kind that trains is here:
this study is the one that plans it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field

from fedleak.device import device_name, resolve_device
from fedleak.fl.federated import FederatedSettings, federated_train
from fedleak.modalities import build_target
from fedleak.pipeline import load_data, resolve_checkpoint
from fedleak.run_unit import RUN_KINDS, Measures, RunSpec
from fedleak.store import RunRecord
from fedleak.studies.aggregate import quality, stats, summarize, value
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, image_runs, register

NO_NOISE = "inf"


def snr_label(snr: float | None) -> str | float:
    return NO_NOISE if snr is None else float(snr)


def noise_spec(snr: float | None, extra: str | None) -> str | None:
    """The defense at one SNR (``None`` = no noise), after ``extra`` stages such as clipping."""
    stages = [s for s in (extra, None if snr is None else f"noise:snr_db={snr:g}") if s]
    return "+".join(stages) or None


@RUN_KINDS.register("fl-train")
def fl_train_kind(study: Measures | None, spec: RunSpec, loader: Callable[..., Any],
                  detail: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    """FedAvg training of the configured model with the run's defense (``extra``: train_images,
    test_images, fl_clients, rounds, local_epochs, fl_lr, fl_batch_size); returns its test accuracy."""
    config, info = resolve_checkpoint(spec.run_config())
    x = spec.extra
    train, test = load_data(config, loader, "train"), load_data(config, loader, "test")
    torch.manual_seed(config.seed)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    train_idx = sorted(pick[: x["train_images"]])
    test_idx = list(range(min(x["test_images"], len(test))))
    target = build_target(config, train, info)
    device = resolve_device(config.device)
    target.model.to(device)  # federated_train follows the model's device
    settings = FederatedSettings(clients=x["fl_clients"], rounds=x["rounds"], local_epochs=x["local_epochs"],
                                 lr=x["fl_lr"], batch_size=x["fl_batch_size"], defense=config.client.defense,
                                 seed=config.seed)
    history = federated_train(target.model, train.images(train_idx), train.label_of(train_idx),
                              test.images(test_idx), test.label_of(test_idx), target.mean, target.std, settings,
                              progress=detail)
    return {"test_accuracy": history.final_accuracy, "accuracy_per_round": history.test_accuracy,
            "fl_seconds": round(history.seconds, 3), "defense": config.client.defense,
            "device": device_name(device), "client_seed": config.client.seed}, {}


class TradeoffSettings(StudySettings):
    snrs: list[float | None] = Field(default_factory=lambda: [None, 0.0, -5.0, -10.0],
                                     description="SNRs in dB of the noise on each update (null: no noise, ∞)")
    defense_before: str | None = Field(None, description="stages before the noise, e.g. clip:c=1")
    train_images: int = Field(1000, ge=1, description="training images shared among the FL clients")
    test_images: int = Field(1000, ge=1, description="test images for the accuracy")
    fl_clients: int = Field(10, ge=1)
    rounds: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1)
    fl_lr: float = Field(0.05, gt=0, description="client learning rate in FL training")
    fl_batch_size: int = Field(32, ge=1)


@register("dp-tradeoff")
class TradeoffStudy(Study):
    """Test accuracy after FedAvg training with Gaussian noise at each SNR on every client update (σ² =
    var(Δ)/10^(SNR/10) per tensor), beside the reconstruction quality an attack reaches from one client's
    update noised the same way (Lim & Chan; Yue et al.)."""

    title = "Noise: privacy against utility"
    # The presets use ConvNet without normalisation layers: the noise acts on the parameter update only
    # (batch-norm running statistics would travel in the clear), and GroupNorm's per-image
    # normalisation stops IG altogether (the measured run: docs/results/README.md, `dp-tradeoff`).
    Settings = TradeoffSettings
    settings: TradeoffSettings
    presets = {
        "cpu": {"images": [0, 1], "model_options": {"norm": "none"}, "attack": {"name": "ig", "iterations": 300},
                "train_images": 2000, "test_images": 1000, "rounds": 10},
        "full": {"images": list(range(8)), "model_options": {"norm": "none"}, "seeds": [0, 1, 2],
                 "attack": {"name": "ig", "iterations": 1200}, "train_images": 10000, "test_images": 10000,
                 "fl_clients": 20, "rounds": 50},
    }

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        runs = []
        for snr in s.snrs:
            label = snr_label(snr)
            spec = noise_spec(snr, s.defense_before)
            for seed in s.seeds:
                extra = {k: getattr(s, k) for k in ("train_images", "test_images", "fl_clients", "rounds",
                                                    "local_epochs", "fl_lr", "fl_batch_size")}
                extra["splits"] = ["train", "test"]  # checked before the study starts
                runs.append(PlannedRun(f"snr={label}/fl-train/seed={seed}", {"snr_db": label, "part": "utility",
                                                                              "seed": seed},
                                       s.flags(**{"seed": seed, "client.defense": spec}), kind="fl-train",
                                       extra=extra))
            runs += image_runs(s, f"snr={label}", {"snr_db": label, "part": "leakage"}, **{"client.defense": spec})
        return runs

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        leakage = [r for r in records if r.params.get("part") == "leakage"]
        utility = [r for r in records if r.params.get("part") == "utility"]
        rows = summarize(leakage, ["snr_db"], quality(leakage))
        for row in rows:
            runs = [r for r in utility if r.params["snr_db"] == row["snr_db"]]
            row.update(stats("test_accuracy", (value(r, "test_accuracy") for r in runs)))
            # The last rounds' mean: one round's accuracy can swing by several points.
            row.update(stats("accuracy_last3", (statistics.fmean(r.metrics["accuracy_per_round"][-3:]) for r in runs)))
        return rows

    def figures(self) -> list[Figure]:
        def beside_accuracy(metric: str, label: str) -> Callable:
            def draw(ax, rows):
                xs = [str(r["snr_db"]).replace(NO_NOISE, "∞") for r in rows]
                ax.errorbar(xs, [r.get(metric, math.nan) for r in rows],
                            yerr=[r.get(f"{metric}_std", 0) for r in rows], marker="o", capsize=3, color="C0")
                ax.set_xlabel("SNR of the noise (dB)")
                ax.set_ylabel(label, color="C0")
                right = ax.twinx()
                accs = [r["test_accuracy"] for r in rows]
                right.plot(xs, accs, marker="s", color="C1")
                right.set_ylim(0, 1)  # on a full scale: small differences in accuracy stay small
                right.set_ylabel("FL test accuracy", color="C1")
                ax.grid(alpha=0.3)

            return draw

        return [Figure("psnr-and-accuracy", "Reconstruction PSNR and test accuracy against SNR",
                       beside_accuracy("psnr", "PSNR (dB)")),
                Figure("lpips-and-accuracy", "LPIPS-alex (n/a without weights) and test accuracy against SNR",
                       beside_accuracy("lpips_alex", "LPIPS-alex (lower: closer)"))]

    def notes(self) -> list[str]:
        s = self.settings
        return [f"Utility: FedAvg, {s.fl_clients} IID clients sharing {s.train_images} {s.dataset} training images, "
                f"{s.rounds} rounds of {s.local_epochs} local epoch(s) (lr {s.fl_lr}, batch {s.fl_batch_size}); "
                f"accuracy on {s.test_images} test images. Leakage: the attack on one client's update with the same "
                f"noise (images {s.images})."]
