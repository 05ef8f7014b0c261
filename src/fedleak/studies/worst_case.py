"""The worst case: every registered attack that applies, under the threat model the study grants.

``fedleak study worst-case`` fixes one client setting (model, protocol, batch size) and, for each
defense of its list, runs every attack of :data:`CATALOGUE` that is registered and whose needs the
granted threat model covers (:mod:`fedleak.needs`) — with the knowledge that threat model grants
(labels, batch-norm statistics) declared, and, where it grants model manipulation, each malicious
server's modification with its own attack. An attack whose preconditions the setting does not meet
(analytic recovery on a convolutional first layer, SPEAR without a linear layer and ReLU, APRIL
without a vision transformer) is recorded as not applying, with its own one-line reason, instead of
failing the study.

The table has, per defense, one row per attack (its success rate: the share of images it
recovered — exactly, at the PSNR cap, or with an SSIM of at least ``ssim`` that beats the no-leak
baselines) and a ``worst case`` row: per image the strongest result any attack reached, the share
of images some attack recovered, and a verdict in the terms of :mod:`fedleak.verdicts`:

- ``leaks``: some attack recovered some image;
- ``no leak found``: at least one attack applied, each ran at or above its stated minimum budget
  (:func:`fedleak.verdicts.minimum_iterations`; none for a run that solved in closed form, i.e.
  recorded no optimisation step) and finished, and none recovered an image — under the granted
  threat model only;
- ``inconclusive``: otherwise, each missing condition named.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator, model_validator

from fedleak.attacks import ATTACKS, build_attack
from fedleak.config import build_config
from fedleak.data import ImageDataset
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.server import server_flags
from fedleak.metrics.baselines import best_guess
from fedleak.metrics.recovery import is_exact
from fedleak.needs import run_needs
from fedleak.run_unit import RUN_KINDS, Artifacts, Measures, RunSpec, attack_kind, describe_error
from fedleak.store import RunRecord
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.figures import grouped_bars
from fedleak.studies.obfuscation import DEFENSES
from fedleak.threats import THREAT_MODELS, threat_model
from fedleak.verdicts import minimum_iterations

CATALOGUE: dict[str, dict[str, Any]] = {
    "ig": {"name": "ig", "iterations": 1000},
    "rog": {"name": "rog"},
    "rog-aware": {"name": "rog", "matching": "auto"},
    "dlg": {"name": "dlg", "iterations": 300},
    "idlg": {"name": "idlg", "iterations": 300},
    "analytic": {"name": "analytic"},
    "spear": {"name": "spear"},
    "april": {"name": "april"},
    "fedavg-dimitrov": {"name": "fedavg-dimitrov"},
    "imprint": {"name": "imprint", "server": "imprint:bins=128"},
    "fishing": {"name": "fishing", "server": "fishing:target=0"},
    "trap": {"name": "trap", "server": "trap"},
}
"""Label → the attack's settings (``server``: the malicious modification it exploits). The study
runs those of them that are registered; an attack added to fedleak joins the worst case here."""

WORST = "worst case"


def _defense(defense: str) -> dict[str, Any]:
    return {"client.defense": None if defense == "none" else defense}

NOT_APPLIED = "n/a"


def _catalogue() -> dict[str, dict[str, Any]]:
    return {label: dict(a) for label, a in CATALOGUE.items() if a["name"] in ATTACKS.names()}


class WorstCaseSettings(StudySettings):
    threat: str = Field("B", description="the threat model granted (A–H, fedleak.threats)")
    attack: dict[str, Any] = Field(default_factory=dict, description="unused: each attack's settings are in `attacks`")
    batch_size: int = Field(1, ge=1, le=4096, description="images per client update (consecutive `images`)")
    defenses: list[str] = Field(default_factory=lambda: list(DEFENSES), description="defense specs ('none': no defense)")
    attacks: dict[str, dict[str, Any]] = Field(default_factory=_catalogue,
                                               description="label → attack settings (server: its modification)")
    ssim: float = Field(0.6, gt=0, le=1, description="SSIM at or above which (and above the no-leak baselines) "
                        "an image counts as recovered")

    @field_validator("threat")
    @classmethod
    def _threat(cls, v: str) -> str:
        if v.strip().upper() not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {v!r}: choose one of {', '.join(THREAT_MODELS)}")
        return v.strip().upper()

    @model_validator(mode="after")
    def _whole_batches(self) -> WorstCaseSettings:
        if len(self.images) % self.batch_size:
            raise ValueError(f"{len(self.images)} images do not split into batches of {self.batch_size}")
        return self


@register("worst-case")
class WorstCaseStudy(Study):
    """Per image the strongest result, per attack its success rate, per defense a verdict."""

    title = "The worst case: every attack that applies, per defense"
    Settings = WorstCaseSettings
    settings: WorstCaseSettings
    presets = {
        "cpu": {"images": [0, 1], "defenses": ["none", "noise:snr_db=10", "topk:sparsity=0.95", "sign"],
                "attacks": {k: v for k, v in {**_catalogue(), "ig": {"name": "ig", "iterations": 200}}.items()
                            if k not in ("dlg", "idlg")}},
        "full": {"images": list(range(8))},
        "mlp": {"model": "mlp", "width": 1.0, "images": list(range(8)), "batch_size": 4,
                "defenses": ["none", "noise:snr_db=30", "noise:snr_db=10", "quantize:bits=3", "topk:sparsity=0.95",
                             "prune:ratio=0.9", "sign"]},
    }

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        batches = [s.images[i:i + s.batch_size] for i in range(0, len(s.images), s.batch_size)]
        runs = []
        for label, attack in s.attacks.items():
            base = self._base(attack)
            for defense in s.defenses:
                if label in self.refused() or f"{label} with {defense}" in self.refused():
                    continue
                for seed in s.seeds:
                    for batch in batches:
                        flags = s.flags(**base, **_defense(defense), **{"data.index": list(batch), "seed": seed})
                        params = {"defense": defense, "attack": label, "images": list(batch), "seed": seed}
                        runs.append(PlannedRun(f"{defense}/{label}/images={batch[0]}/seed={seed}", params, flags,
                                               kind="worst-case", seed_scope={"images": list(batch), "seed": seed,
                                                                              "defense": defense}))
        return runs

    def _base(self, attack: dict[str, Any]) -> dict[str, Any]:
        """The flags every run of ``attack`` shares: its settings, its server, the granted knowledge."""
        granted = threat_model(self.settings.threat)
        base = {**{f"attack.{k}": v for k, v in attack.items() if k != "server"}, "threat": granted.letter,
                "knowledge.labels": "labels" in granted.grants, "knowledge.bn_stats": "bn_stats" in granted.grants,
                "client.batch_size": self.settings.batch_size}
        return {**base, **(server_flags(attack["server"]) if attack.get("server") else {})}

    def refused(self) -> dict[str, str]:
        """``attack`` or ``attack with defense`` → the capabilities it needs that the threat model does
        not grant: those runs are not planned."""
        if not hasattr(self, "_refused"):
            grants = threat_model(self.settings.threat).grants
            self._refused: dict[str, str] = {}
            for label, attack in self.settings.attacks.items():
                for defense in self.settings.defenses:
                    if label in self._refused:
                        break
                    cfg = build_config(flags=self.settings.flags(**self._base(attack), **_defense(defense)))
                    needs = run_needs(cfg, build_attack(cfg.attack.name, cfg.attack.settings()))
                    missing = sorted(c for c in needs if c not in grants)
                    if missing:
                        self._refused[label if defense == "none" else f"{label} with {defense}"] = \
                            f"needs {', '.join(missing)}"
        return self._refused

    def recovered(self, image: dict[str, Any], bar: float) -> bool:
        """Exact (at the PSNR cap), or SSIM ≥ the threshold and above the no-leak bar."""
        return is_exact(image["psnr"]) or (image["ssim"] >= self.settings.ssim and image["ssim"] > bar)

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for defense in dict.fromkeys(r.params["defense"] for r in records):
            mine = [r for r in records if r.params["defense"] == defense]
            attack_rows = [self._attack_row(defense, label, [r for r in mine if r.params["attack"] == label])
                           for label in dict.fromkeys(r.params["attack"] for r in mine)]
            rows += attack_rows
            rows.append(self._worst_row(defense, mine, attack_rows))
        return rows

    def _images(self, records: list[RunRecord]) -> dict[tuple[int, int], tuple[dict[str, Any], float]]:
        """(dataset index, seed) → (the image's scores, its run's no-leak SSIM bar)."""
        out = {}
        for r in records:
            bar = (best_guess(r.metrics.get("baselines")) or {}).get("ssim", 0.0)
            for i, image in enumerate(r.metrics.get("images", [])):
                index = image.get("dataset_index")
                out[(index if index is not None else r.params["images"][i], r.params["seed"])] = (image, bar)
        return out

    def _attack_row(self, defense: str, label: str, records: list[RunRecord]) -> dict[str, Any]:
        ran = [r for r in records if r.metrics.get("applies", True)]
        row: dict[str, Any] = {"defense": defense, "attack": label, "runs": len(records)}
        if not ran:
            reasons = dict.fromkeys(str(r.metrics.get("reason", "")) for r in records)
            return {**row, "applies": f"{NOT_APPLIED}: {'; '.join(reasons)}", "images": 0}
        images = self._images(ran)
        scores = [s for s, _ in images.values()]
        # a run that took no optimisation step solved in closed form (analytic; SPEAR through a first
        # linear layer; APRIL): no iteration minimum applies to it, whatever the attack's settings count
        optimised = [n for n in (int(r.metrics.get("iterations", 0)) for r in ran) if n > 0]
        iterations = min(optimised, default=0)
        attack = {k: v for k, v in self.settings.attacks.get(label, {"name": label}).items() if k != "server"}
        minimum = minimum_iterations(attack["name"], build_attack(attack.pop("name"), attack).config) if optimised else 0
        if not scores:
            return {**row, "applies": "yes", "images": 0, "iterations": iterations, "minimum": minimum}
        return {**row, "applies": "yes", "images": len(scores),
                "recovered": sum(self.recovered(s, bar) for s, bar in images.values()) / len(scores),
                "exact": sum(is_exact(s["psnr"]) for s in scores) / len(scores),
                "psnr": statistics.fmean(s["psnr"] for s in scores), "ssim": statistics.fmean(s["ssim"] for s in scores),
                "ssim_no_leak": statistics.fmean(bar for _, bar in images.values()),
                "iterations": iterations, "minimum": minimum}

    def _worst_row(self, defense: str, records: list[RunRecord], attack_rows: list[dict[str, Any]]) -> dict[str, Any]:
        best: dict[tuple[int, int], tuple[str, dict[str, Any], float]] = {}
        for r in records:
            if not r.metrics.get("applies", True):
                continue
            for key, (image, bar) in self._images([r]).items():
                held = best.get(key)
                rank = (self.recovered(image, bar), is_exact(image["psnr"]), image["ssim"])
                if held is None or rank > (self.recovered(held[1], held[2]), is_exact(held[1]["psnr"]), held[1]["ssim"]):
                    best[key] = (r.params["attack"], image, bar)
        applied = [a for a in attack_rows if a["applies"] == "yes" and a["images"]]
        hits = [(label, image) for label, image, bar in best.values() if self.recovered(image, bar)]
        row: dict[str, Any] = {"defense": defense, "attack": WORST, "runs": len(records), "applies": f"{len(applied)} attacks",
                               "images": len(best)}
        if best:
            row.update(recovered=len(hits) / len(best),
                       exact=sum(is_exact(image["psnr"]) for _, image, _ in best.values()) / len(best),
                       psnr=statistics.fmean(image["psnr"] for _, image, _ in best.values()),
                       ssim=statistics.fmean(image["ssim"] for _, image, _ in best.values()),
                       strongest=max(applied, key=lambda a: (a["recovered"], a["exact"], a["ssim"]))["attack"],
                       per_image="; ".join(f"{index}: {label} {image['ssim']:.2f}"
                                           for (index, _), (label, image, _) in sorted(best.items())))
        row["verdict"], row["reason"] = self._verdict(hits, applied, attack_rows)
        return row

    def _verdict(self, hits: list[tuple[str, dict[str, Any]]], applied: list[dict[str, Any]],
                 attack_rows: list[dict[str, Any]]) -> tuple[str, str]:
        threat = threat_model(self.settings.threat).describe()
        if hits:
            by = sorted(dict.fromkeys(label for label, _ in hits))
            return "leaks", f"{len(hits)} image(s) recovered (by {', '.join(by)}) under threat model {threat}"
        missing = []
        if not applied:
            missing.append("no attack applied")
        short = [f"{a['attack']} ran {a['iterations']} of its {a['minimum']} iterations" for a in applied
                 if a["iterations"] < a["minimum"]]
        missing += short
        unfinished = [label for label in self.settings.attacks if not any(k.split(" with ")[0] == label for k in self.refused())
                      and label not in {a["attack"] for a in attack_rows}]
        if unfinished:
            missing.append(f"no finished run of {', '.join(unfinished)}")
        if missing:
            return "inconclusive", "; ".join(missing)
        return "no leak found", (f"{len(applied)} attacks at their minimum budgets recovered no image "
                                 f"(SSIM ≥ {self.settings.ssim:g} above the no-leak baselines) under threat model {threat}")

    def notes(self) -> list[str]:
        granted = threat_model(self.settings.threat).describe()
        lines = [f"Threat model {granted}. An image counts as recovered when it is exact (PSNR at the 100 dB cap) or its "
                 f"SSIM is at least {self.settings.ssim:g} and above its run's no-leak baseline (ssim_no_leak)."]
        lines += [f"Not run under this threat model: {label} ({why})." for label, why in self.refused().items()]
        return lines

    def figures(self) -> list[Figure]:
        def draw(ax, rows):
            shown = [r for r in rows if "recovered" in r]
            defenses = grouped_bars(ax, shown, lambda r: r["defense"], "attack", "recovered")
            ax.set_xticklabels([d.split(",")[0] for d in defenses], rotation=35, ha="right", fontsize=7)
            ax.set_xlabel("defense")
            ax.set_ylabel("share of images recovered")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7)

        return [Figure("recovered-by-defense", "Images recovered per defense and attack", draw)]


@RUN_KINDS.register("worst-case")
def worst_case_kind(study: Measures | None, spec: RunSpec, loader: Callable[..., ImageDataset],
                    detail: bool) -> Artifacts:
    """An attack run; an attack whose preconditions the setting does not meet (a :class:`FedleakError`
    that is no configuration error) is recorded as not applying, with its reason."""
    try:
        return attack_kind(study, spec, loader, detail)
    except ConfigError:
        raise
    except FedleakError as exc:
        return {"applies": False, "reason": describe_error(exc)}, {}
