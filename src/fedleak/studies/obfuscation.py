"""Yue et al.'s tables as studies: every obfuscation × attack (``obfuscation``), and reconstruction
quality against wall time per attack (``efficiency``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedleak.defenses import parse_defense
from fedleak.models.registry import without_batch_norm
from fedleak.store import RunRecord
from fedleak.studies.aggregate import quality, summarize
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, image_runs, register
from fedleak.studies.figures import grouped_bars

DEFENSES = ["none", "quantize:bits=3", "qsgd:levels=4", "topk:sparsity=0.95", "sign", "noise:snr_db=0",
            "clip:c=1", "prune:ratio=0.9"]


def _attacks() -> dict[str, dict[str, Any]]:
    return {"ig": {"name": "ig", "iterations": 200},
            "rog": {"name": "rog"},
            "rog-aware": {"name": "rog", "matching": "auto"}}


# The ROG paper's obfuscations (Yue et al. 2023, §3 and the authors' release): QSGD as they ran it
# (max-abs scale, 16 levels) and as Alistarh et al. define it, uniform quantization, top-k, signSGD and
# Gaussian noise at their DP SNRs.
ROG_DEFENSES = ["none", "qsgd:levels=16,scale=max", "qsgd:levels=16", "quantize:bits=4", "topk:sparsity=0.9",
                "sign", "noise:snr_db=0", "noise:snr_db=-10"]


def _fedsgd_alone() -> dict[str, dict[str, Any]]:
    return {"fedsgd": {}}


class ObfuscationSettings(StudySettings):
    defenses: list[str] = Field(default_factory=lambda: list(DEFENSES), description="defense specs ('none': no defense)")
    attacks: dict[str, dict[str, Any]] = Field(default_factory=_attacks, description="label → attack settings")
    batch_size: int = Field(1, ge=1, description="images in each client's update: image i and the B − 1 at "
                            "batch_stride after it")
    batch_stride: int = Field(1, ge=1, description="index step between a batch's images (10 on ORL: one image "
                              "of each of B people)")
    protocols: dict[str, dict[str, Any]] = Field(default_factory=_fedsgd_alone,
                                                 description="label → client settings of each FL protocol row, "
                                                 "e.g. {fedavg: {protocol: fedavg, local_steps: 5, lr: 0.003}}")


@register("obfuscation")
class ObfuscationStudy(Study):
    """PSNR / SSIM / time of each attack against each obfuscation (Yue et al., Tables 2–4)."""

    title = "Obfuscated updates: defense × attack"
    Settings = ObfuscationSettings
    settings: ObfuscationSettings
    presets = {
        "cpu": {"images": [0, 1]},
        "full": {"images": list(range(8)), "model": "resnet18",
                 "defenses": [*DEFENSES, "dpsgd:clip=1,noise_multiplier=1.1", "aggregate:clients=8"],
                 "attacks": {"ig": {"name": "ig", "iterations": 1200}, "rog": {"name": "rog"},
                             "rog-aware": {"name": "rog", "matching": "auto"}}},
        # Yue et al.'s settings on ORL at 128 px (grey; `--root` the orl_faces folder): their LeNet at full width,
        # B = 16 (one image of each of 16 people), FedSGD and FedAvg τ = 5 at their lr 0.003, ROG with
        # their scale 4, 100 iterations, lr 0.05; PSNR, SSIM and their global YCbCr SSIM (ssim_rog).
        "rog-paper": {"dataset": "folder", "split": "train", "image_size": 128, "model": "lenet-rog", "width": 1.0,
                      "images": [0, 1, 2, 3], "batch_size": 16, "batch_stride": 10, "defenses": list(ROG_DEFENSES),
                      "knowledge": {"labels": True},
                      "protocols": {"fedsgd": {}, "fedavg": {"protocol": "fedavg", "local_steps": 5, "lr": 0.003}},
                      "attacks": {"rog": {"name": "rog", "scale": 4}, "rog-aware": {"name": "rog", "scale": 4,
                                                                                   "matching": "auto"}}},
    }

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        variants = {s.model: (s.model_options, s.defenses)}
        no_norm = None if s.checkpoint else without_batch_norm(s.model, s.model_options)
        if no_norm is not None and any(d.startswith("dpsgd") for d in s.defenses):
            # DP-SGD rows run without normalisation layers, beside that variant's no-defense baseline.
            variants[s.model] = (s.model_options, [d for d in s.defenses if not d.startswith("dpsgd")])
            variants[f"{s.model}+nonorm"] = (no_norm, ["none", *[d for d in s.defenses if d.startswith("dpsgd")]])
        runs = []
        for variant, (options, defenses) in variants.items():
            for protocol, client in s.protocols.items():
                for defense in defenses:
                    for label, attack in s.attacks.items():
                        runs += self._cell(variant, options, protocol, client, defense, label, attack)
        return runs

    def _cell(self, variant: str, options: dict[str, Any], protocol: str, client: dict[str, Any], defense: str,
              label: str, attack: dict[str, Any]) -> list[PlannedRun]:
        s = self.settings
        flags = {f"attack.{k}": v for k, v in attack.items()}
        flags.update({f"client.{k}": v for k, v in client.items()})
        flags["client.defense"] = None if defense == "none" else defense
        flags["model.options"] = dict(options)
        params: dict[str, Any] = {"model": variant, "defense": defense, "attack": label}
        name = f"{defense}/{label}" if variant == s.model else f"{variant}/{defense}/{label}"
        if self._by_protocol():  # a study of FedSGD alone keeps its run names and rows
            params["protocol"] = protocol
            name = f"{protocol}/{name}"
        if s.batch_size > 1:
            flags["client.batch_size"] = s.batch_size
        cell = image_runs(s, name, params, **flags)
        clients = parse_defense(flags["client.defense"]).clients
        for run in cell:  # the server averages K clients of B images: K·B images from image i on
            run.flags["data.index"] = [run.params["image"] + j * s.batch_stride
                                       for j in range(clients * s.batch_size)]
        return cell

    def _by_protocol(self) -> bool:
        return list(self.settings.protocols) != ["fedsgd"]

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        by = ["model", *(["protocol"] if self._by_protocol() else []), "defense", "attack"]
        return summarize(records, by, quality(records))

    def figures(self) -> list[Figure]:
        base = self.settings.model

        def draw(ax, rows):
            cases = grouped_bars(ax, rows, lambda r: (r["model"], r["defense"]), "attack", "psnr")
            ax.set_xticklabels([d.split(",")[0] + ("" if m == base else f" ({m.removeprefix(base)})")
                                for m, d in cases], rotation=35, ha="right", fontsize=7)
            ax.set_xlabel("defense (model variant)")
            ax.set_ylabel("PSNR (dB)")
            ax.legend()

        return [Figure("psnr-by-defense", "PSNR per defense and attack", draw)]


class EfficiencySettings(StudySettings):
    attacks: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"ig": {"name": "ig"}, "rog": {"name": "rog"}}, description="label → attack settings")
    iterations: list[int] = Field(default_factory=lambda: [25, 50, 100, 200, 400], description="iteration budgets")


@register("efficiency")
class EfficiencyStudy(Study):
    """Reconstruction quality against wall time for each attack over iteration budgets."""

    title = "Efficiency: quality against time"
    Settings = EfficiencySettings
    settings: EfficiencySettings
    presets = {
        "cpu": {"images": [0, 1], "iterations": [25, 50, 100, 200, 400]},
        "full": {"images": list(range(8)), "iterations": [50, 100, 200, 400, 800, 1600, 3200]},
    }

    def plan(self) -> list[PlannedRun]:
        runs = []
        for label, attack in self.settings.attacks.items():
            for n in self.settings.iterations:
                flags = {f"attack.{k}": v for k, v in attack.items()}
                flags["attack.iterations"] = n
                runs += image_runs(self.settings, f"{label}/it={n}", {"attack": label, "iterations": n}, **flags)
        return runs

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        return summarize(records, ["attack", "iterations"], quality(records))

    def figures(self) -> list[Figure]:
        def draw(ax, rows):
            for attack in dict.fromkeys(r["attack"] for r in rows):
                sel = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["attack_seconds"])
                ax.plot([r["attack_seconds"] for r in sel], [r["psnr"] for r in sel], marker="o", label=attack)
            ax.set_xscale("log")
            ax.set_xlabel("attack seconds per image (log)")
            ax.set_ylabel("PSNR (dB)")
            ax.legend()
            ax.grid(alpha=0.3)

        return [Figure("psnr-vs-time", "PSNR against attack time", draw)]
