"""Does secure aggregation protect a client from a malicious server? (``secure-aggregation``)

Images recovered exactly (PSNR at the 100 dB cap) against the client batch size B and the number K
of clients whose updates the server only sees as their mean (``aggregate:clients=K``, what secure
aggregation leaves it), for three servers: honest (Inverting Gradients on the aggregate), imprint
(Robbing the Fed; the server sizes its imprint layer to the B·K images it knows stand behind the
update) and class fishing (IG on the gradient of the isolated target class). The imprint server is
also measured under every listed client defense, applied by each client before aggregation.
Cells with more images than the dataset holds are skipped; the honest and fishing attacks, which
optimise over the images, run where B·K stays within their ``*_max_images`` budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import Field

from fedleak.metrics.recovery import recovery_summary
from fedleak.run_unit import RUN_KINDS, Measures, RunSpec
from fedleak.store import RunRecord
from fedleak.studies.aggregate import summarize, value
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.figures import grouped_bars, rate_axes

SERVERS = ("honest", "imprint", "fishing")
KEPT_IMAGES = 4  # originals and reconstructions kept per run (a run attacks up to thousands of images)


@RUN_KINDS.register("attack-sample")
def sampled_attack(study: Measures | None, spec: RunSpec, loader: Callable[..., Any],
                   detail: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An attack run that keeps the image files of only its first ``extra["keep_images"]`` images."""
    metrics, artifacts = RUN_KINDS.get("attack")(study, spec, loader, detail)
    keep = {f"{kind}-{i}.png" for i in range(spec.extra.get("keep_images", KEPT_IMAGES))
            for kind in ("original", "reconstruction")}
    return metrics, {name: data for name, data in artifacts.items() if name in keep}


class SecureAggregationSettings(StudySettings):
    attack: dict[str, Any] = Field(default_factory=dict, description="unused: each server has its own attack")
    batch_sizes: list[int] = Field(default_factory=lambda: [8, 32, 128], description="client batch sizes B")
    clients: list[int] = Field(default_factory=lambda: [1, 4, 16], description="aggregated clients K")
    servers: list[str] = Field(default_factory=lambda: list(SERVERS), description="honest | imprint | fishing")
    defenses: list[str] = Field(default_factory=lambda: ["none", "noise:snr_db=20", "noise:snr_db=0", "clip:c=1",
                                                         "topk:sparsity=0.9", "dpsgd:clip=1,noise_multiplier=1.1"],
                                description="client defenses against the imprint server ('none': no defense)")
    bins_per_image: float = Field(2.0, gt=0, description="imprint rows per image behind the update (B·K)")
    max_bins: int = Field(2048, ge=1, description="largest imprint layer the server sends")
    imprint: dict[str, Any] = Field(default_factory=dict, description="other imprint settings, e.g. measure: random")
    fishing_target: int = Field(0, ge=0, description="the class the fishing server isolates")
    honest_attack: dict[str, Any] = Field(default_factory=lambda: {"name": "ig", "iterations": 300})
    fishing_attack: dict[str, Any] = Field(default_factory=lambda: {"name": "ig", "iterations": 300})
    honest_max_images: int = Field(32, ge=1, description="largest B·K the honest attack runs on")
    fishing_max_images: int = Field(128, ge=1, description="largest B·K the fishing attack runs on")
    dataset_images: int = Field(10_000, ge=1, description="images of the client split (cells need B·K of them)")


@register("secure-aggregation")
class SecureAggregationStudy(Study):
    """Exact recovery against batch size and aggregated clients: honest vs imprint vs fishing."""

    title = "Secure aggregation against a malicious server"
    Settings = SecureAggregationSettings
    settings: SecureAggregationSettings
    presets = {
        "cpu": {"dataset": "cifar10", "image_size": 16, "model": "convnet", "width": 0.25,
                "model_options": {"norm": "none"}, "client_seed": 0, "seeds": [0]},
        "full": {"dataset": "cifar10", "image_size": 32, "model": "convnet", "width": 1.0,
                 "model_options": {"norm": "none"}, "client_seed": 0, "seeds": [0, 1, 2],
                 "batch_sizes": [8, 16, 32, 64, 128, 256], "clients": [1, 2, 4, 8, 16, 32, 64],
                 "max_bins": 65_536, "honest_attack": {"name": "ig", "iterations": 1200},
                 "fishing_attack": {"name": "ig", "iterations": 1200}, "honest_max_images": 256,
                 "fishing_max_images": 1024},
    }

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        runs = []
        for b in s.batch_sizes:
            for k in s.clients:
                if b * k > s.dataset_images:
                    continue
                for server in s.servers:
                    for defense in self._defenses(server, b * k):
                        for seed in s.seeds:
                            params = {"server": server, "defense": defense, "batch": b, "clients": k, "seed": seed}
                            public = {"splits": ["train"]} if server != "honest" else {}  # checked up front
                            # every server and defense of a cell attacks the same client batches: one seed scope
                            runs.append(PlannedRun(f"{server}/{defense}/B={b}/K={k}/seed={seed}", params,
                                                   s.flags(**self._flags(server, defense, b, k, seed)),
                                                   kind="attack-sample", extra={"keep_images": KEPT_IMAGES,
                                                                                **public},
                                                   seed_scope={"batch": b, "clients": k, "seed": seed}))
        return runs

    def _defenses(self, server: str, images: int) -> list[str]:
        s = self.settings
        if server == "imprint":
            return list(s.defenses)
        budget = s.honest_max_images if server == "honest" else s.fishing_max_images
        return ["none"] if images <= budget else []

    def _flags(self, server: str, defense: str, b: int, k: int, seed: int) -> dict[str, Any]:
        s = self.settings
        stages = [d for d in (None if defense == "none" else defense, f"aggregate:clients={k}" if k > 1 else None) if d]
        flags: dict[str, Any] = {"seed": seed, "client.batch_size": b, "client.defense": "+".join(stages) or None}
        if server == "honest":
            attack = s.honest_attack
        elif server == "imprint":
            bins = min(s.max_bins, max(1, math.ceil(s.bins_per_image * b * k)))
            extra = "".join(f",{key}={v}" for key, v in s.imprint.items())
            flags.update({"server.threat": "malicious", "server.modification": f"imprint:bins={bins}{extra}"})
            attack = {"name": "imprint"}
        else:
            flags.update({"server.threat": "malicious", "server.modification": f"fishing:target={s.fishing_target}"})
            attack = {"name": "fishing", "attack": dict(s.fishing_attack)}
        flags.update({f"attack.{key}": v for key, v in attack.items()})
        return flags

    def measure(self, result: Any, run: PlannedRun) -> dict[str, Any]:
        psnrs = [im.psnr for im in result.evaluation.images]
        summary = recovery_summary(psnrs)
        facts = {k: v for row in result.reconstruction.trace for k, v in row.items()}
        isolated = facts.get("isolated_images")
        # The attacks put their reconstructions first and fill the rest with the mean colour (a guess).
        made = facts.get("recovered", isolated if isolated is not None else len(psnrs))
        reconstructed = [im.psnr for im in result.evaluation.images if im.matched < made]
        target = [im.psnr for im in result.evaluation.images if im.label == self.settings.fishing_target]
        return {"server": result.payload.hyper.server, "exact_images": summary["exact_images"],
                "observed_images": summary["images"], "exact_fraction": summary["exact_fraction"],
                "psnr_best": max(reconstructed, default=None), "psnr_median": summary["psnr_distribution"]["median"],
                "psnr_distribution": summary["psnr_distribution"], "isolated_images": isolated,
                "target_images": len(target), "psnr_target": sum(target) / len(target) if target else None}

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        def pooled(members: list[RunRecord]) -> dict[str, Any]:
            exact = sum(int(value(r, "exact_images") or 0) for r in members)
            seen = sum(int(value(r, "observed_images") or 0) for r in members)
            return {"images": seen, "exact": exact, "exact_rate": exact / seen if seen else math.nan}

        rows = summarize(records, ["server", "defense", "batch", "clients"],
                         ["psnr", "psnr_median", "psnr_best", "psnr_target", "target_images", "isolated_images",
                          "ssim", "attack_seconds"], pooled)
        return sorted(rows, key=lambda r: (SERVERS.index(r["server"]) if r["server"] in SERVERS else 9,
                                           r["defense"] != "none", r["defense"], r["batch"], r["clients"]))

    def figures(self) -> list[Figure]:
        def by_images(ax, rows):
            for server in dict.fromkeys(r["server"] for r in rows):
                for k in sorted({r["clients"] for r in rows if r["server"] == server}):
                    sel = sorted((r for r in rows if r["server"] == server and r["defense"] == "none"
                                  and r["clients"] == k), key=lambda r: r["batch"])
                    if sel:
                        ax.plot([r["batch"] for r in sel], [r["exact_rate"] for r in sel], marker="o",
                                label=f"{server}, K={k}")
            rate_axes(ax, "client batch size B", "images recovered exactly", 0.02, legend_size=7)

        def by_defense(ax, rows):
            sel = [r for r in rows if r["server"] == "imprint"]
            cells = grouped_bars(ax, sel, lambda r: (r["batch"], r["clients"]), "defense", "exact_rate",
                                 label=lambda d: d.split(",")[0])
            ax.set_xticklabels([f"B={b}\nK={k}" for b, k in cells], fontsize=7)
            ax.set_xlabel("client batch size B, aggregated clients K")
            ax.set_ylabel("images recovered exactly (imprint)")
            ax.legend(fontsize=7)

        return [Figure("exact-vs-batch", "Images recovered exactly against batch size, per server and K", by_images),
                Figure("imprint-defenses", "Imprint: exact recovery under each client defense", by_defense)]

    def notes(self) -> list[str]:
        s = self.settings
        return [
            "exact: images whose reconstruction reaches the 100 dB PSNR cap (bit-exact within float32) after "
            "Hungarian matching, pooled over the cell's runs; images: B·K per run. psnr_best: the best reconstruction "
            "of a run (not counting the mean-colour images an attack returns for what it did not reconstruct).",
            f"imprint: {s.bins_per_image:g} rows per image behind the update (at most {s.max_bins}), thresholds from "
            "public (train-split) images; defenses run on each client before the server's aggregate.",
            f"fishing: the server isolates class {s.fishing_target}; IG ({s.fishing_attack}) runs on the isolated "
            "gradient of that class's images (isolated_images: how many the bias update says there were; "
            "target_images: how many there were; psnr_target: their mean PSNR, for every server on the same batches).",
            f"honest: {s.honest_attack} on the aggregate, for B·K ≤ {s.honest_max_images}.",
        ]
