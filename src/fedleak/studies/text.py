"""Text leakage (issue #26): attack × batch size × sequence length × defense on a language model.

``fedleak study text`` attacks, in every cell of its grid, ``batches`` client batches of ``B``
consecutive sentences of the text dataset (default: the generated ``pii`` corpus, whose sentences
carry names, e-mail addresses, phone numbers, postal addresses and card numbers), each cut or padded
to ``T`` tokens (the dataset's ``seq_len`` option), under one update-level defense. Batch ``j`` of a
cell is the sentences ``j·B·K … (j+1)·B·K − 1`` of the split (``K``: the clients an ``aggregate``
defense averages, whose batches are all private data at risk), so the cells of one ``B`` attack the
same sentences. Attacks: DAGER (exact, :mod:`fedleak.attacks.dager`) and TAG (optimisation,
:mod:`fedleak.attacks.tag`). The grid is the product of the lists, less what two settings leave out:
an attack's entry may name the ``batch_sizes``, ``lengths`` and ``defenses`` it runs at (a slow
optimisation only on small cells), and ``defense_batch_sizes`` the batch sizes at which the defenses
other than ``none`` run.

The table has one row per cell (attack, B, T, defense):

- ``exact``: the share of the cell's sequences recovered token for token (over all its batches),
  with a Wilson 95 % interval (:func:`~fedleak.studies.aggregate.proportion`);
- ``rouge1``, ``rouge2``: ROUGE-1/2 F of each original against its matched reconstruction, the mean
  over the cell's sequences with a Student-t 95 % interval over those sequences (the sequences of
  one batch are counted as separate draws); ``rouge1_no_leak``: the runs' no-leak baseline (every
  original against a sentence of the set outside the batch, :func:`fedleak.modalities.text.text_baselines`),
  what a plausible but unrelated sentence of the corpus scores;
- ``token_accuracy``: the share of the originals' real positions recovered (mean over sequences, t-interval);
- ``pii``: the share of the batches' PII spans whose text appears verbatim in the matched
  reconstruction (spans cut off by ``T`` do not count), with a Wilson interval;
- ``attack_seconds``: the attack's wall time per batch (mean over the cell's runs).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator

from fedleak.defenses import parse_defense
from fedleak.store import RunRecord
from fedleak.studies.aggregate import NO_LEAK, proportion, stats
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.figures import rate_axes

DEFENSES = ["none", "noise:snr_db=30", "noise:snr_db=10", "clip:c=1", "topk:sparsity=0.9", "quantize:bits=8",
            "aggregate:clients=2"]
"""Update-level defenses that apply to any model's update (DP-SGD's per-example gradients and
Soteria's image-feature pruning are left to their own studies)."""

GRID = ("attack", "batch_size", "length", "defense")  # a row's coordinates
RESTRICT = ("batch_sizes", "lengths", "defenses")  # keys of an attack's entry that pick its rows, not its settings


def _attacks() -> dict[str, dict[str, Any]]:
    return {"dager": {"name": "dager"}, "tag": {"name": "tag", "iterations": 300}}


class TextSettings(StudySettings):
    dataset: str = Field("pii", description="text dataset of the attacked clients (pii | text | hf-disk)")
    model: str = Field("gpt2-tiny", description="target text model")
    width: float = Field(1.0, description="hidden-size multiplier of the text model")
    data_options: dict[str, Any] = Field(default_factory=dict, description="the dataset's options (n, tokenizer, "
                                         "vocab_size, …); seq_len is each cell's length")
    attack: dict[str, Any] = Field(default_factory=dict, description="unused: each attack's settings are in `attacks`")
    attacks: dict[str, dict[str, Any]] = Field(default_factory=_attacks, description="label → attack settings; "
                                               "`batch_sizes`/`lengths`/`defenses` in one restrict that attack's rows")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 8, 16], description="sequences per client batch")
    lengths: list[int] = Field(default_factory=lambda: [16, 32], description="tokens per sequence (seq_len)")
    defenses: list[str] = Field(default_factory=lambda: list(DEFENSES), description="defense specs ('none': no defense)")
    defense_batch_sizes: list[int] | None = Field(None, description="the batch sizes at which the defenses other "
                                                  "than none run (default: every batch size)")
    batches: int = Field(3, ge=1, le=10_000, description="client batches attacked per cell")
    protocol: str = Field("fedsgd", description="client protocol (fedsgd | fedavg; fedavg's steps via client)")

    @field_validator("batch_sizes", "lengths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v

    @field_validator("attacks")
    @classmethod
    def _named(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label, entry in v.items():
            if "name" not in entry:
                raise ValueError(f"attack {label!r} names no attack (its `name`)")
            if any(not isinstance(entry.get(k, []), list) for k in RESTRICT):
                raise ValueError(f"attack {label!r}: batch_sizes, lengths and defenses must be lists")
        return v


@register("text")
class TextStudy(Study):
    """Exact sequences, ROUGE, token accuracy and PII recovered per attack, B, T and defense."""

    title = "Text leakage: attack × batch size × sequence length × defense"
    Settings = TextSettings
    settings: TextSettings
    grid_columns = False  # the reconstructions are texts (each run's sequences.json), no image grid
    presets = {
        # gpt2-tiny at GPT-2 small's width (d = 768, 2 blocks): DAGER's rank condition B·T < d is the
        # paper's; two blocks are all DAGER reads.
        "cpu": {"model_options": {"hidden": 768}, "batch_sizes": [1, 4, 8, 16], "lengths": [16, 32],
                "batches": 1, "defenses": ["none", "noise:snr_db=30", "clip:c=1", "topk:sparsity=0.9",
                                           "aggregate:clients=2"], "defense_batch_sizes": [4],
                # TAG takes about a CPU second per step at d = 768: 50 steps, no defense, B ≤ 4, T = 16
                "attacks": {"dager": {"name": "dager"},
                            "tag": {"name": "tag", "iterations": 50, "batch_sizes": [1, 4], "lengths": [16],
                                    "defenses": ["none"]}}},
        "full": {"model": "gpt2-small-shape", "batch_sizes": [1, 4, 8, 16, 32], "lengths": [16, 32, 64],
                 "batches": 5, "data_options": {"n": 2048}},
    }

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        runs = []
        for label, entry in s.attacks.items():
            attack = {k: v for k, v in entry.items() if k not in RESTRICT}
            for b in [b for b in s.batch_sizes if b in entry.get("batch_sizes", s.batch_sizes)]:
                for length in [n for n in s.lengths if n in entry.get("lengths", s.lengths)]:
                    for defense in [d for d in s.defenses if d in entry.get("defenses", s.defenses)
                                    and (d == "none" or s.defense_batch_sizes is None or b in s.defense_batch_sizes)]:
                        spec = None if defense == "none" else defense
                        size = b * parse_defense(spec).clients  # the sentences of all K aggregated clients
                        for seed in s.seeds:
                            for j in range(s.batches):
                                flags = s.flags(**{f"attack.{k}": v for k, v in attack.items()}, **{
                                    "data.options": {**s.data_options, "seq_len": length},
                                    "data.index": list(range(j * size, (j + 1) * size)), "seed": seed,
                                    "client.batch_size": b, "client.defense": spec, "client.protocol": s.protocol})
                                params = {"attack": label, "batch_size": b, "length": length, "defense": defense,
                                          "batch": j, "seed": seed}
                                runs.append(PlannedRun(f"{label}/B={b}/T={length}/{defense}/batch={j}/seed={seed}",
                                                       params, flags))
        return runs

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        cells: dict[tuple, list[RunRecord]] = {}
        for r in records:
            cells.setdefault(tuple(r.params[k] for k in GRID), []).append(r)
        return [self._row(dict(zip(GRID, key)), members) for key, members in cells.items()]

    @staticmethod
    def _row(row: dict[str, Any], records: list[RunRecord]) -> dict[str, Any]:
        sequences = [t for r in records for t in r.metrics.get("texts", [])]
        row = {**row, "runs": len(records), "sequences": len(sequences)}
        row.update(proportion("exact", sum(bool(t["exact"]) for t in sequences), len(sequences)))
        for metric in ("rouge1", "rouge2", "token_accuracy"):
            row.update(stats(metric, (t[metric] for t in sequences)))
        base = [b["rouge1"] for b in ((r.metrics.get("baselines") or {}).get("other_text") for r in records) if b]
        row[f"rouge1{NO_LEAK}"] = sum(base) / len(base) if base else math.nan
        spans = sum(int(r.metrics.get("pii_spans") or 0) for r in records)
        row.update(proportion("pii", sum(int(r.metrics.get("pii_recovered_spans") or 0) for r in records), spans))
        row.update(stats("attack_seconds", (r.metrics.get("attack_seconds") for r in records)))
        return row

    def notes(self) -> list[str]:
        s = self.settings
        return [f"Each row: {s.batches} batch(es) of B sentences of {s.dataset} per seed, each cut or padded to T "
                f"tokens, model {s.model}, protocol {s.protocol}. exact and pii: shares with Wilson intervals over "
                "the row's sequences and PII spans; rouge1, rouge2, token_accuracy: means over the row's sequences "
                "with t-intervals over them (n = sequences); rouge1_no_leak: an unrelated sentence of the corpus "
                "scored against each original."]

    def figures(self) -> list[Figure]:
        def exact_by_batch(ax, rows):
            for (attack, length) in dict.fromkeys((r["attack"], r["length"]) for r in rows):
                sel = sorted((r for r in rows if r["attack"] == attack and r["length"] == length
                              and r["defense"] == "none"), key=lambda r: r["batch_size"])
                if sel:
                    ax.plot([r["batch_size"] for r in sel], [r["exact"] for r in sel], marker="o",
                            label=f"{attack}, T={length}")
            rate_axes(ax, "batch size B (log 2)", "exact-sequence rate (no defense)", 0.05, 7)

        def rouge_by_defense(ax, rows):
            defenses = list(dict.fromkeys(r["defense"] for r in rows))
            for (attack, b, length) in dict.fromkeys((r["attack"], r["batch_size"], r["length"]) for r in rows):
                got = {r["defense"]: r["rouge1"] for r in rows
                       if (r["attack"], r["batch_size"], r["length"]) == (attack, b, length)}
                ax.plot(range(len(defenses)), [got.get(d, math.nan) for d in defenses], marker="o",
                        label=f"{attack} B={b} T={length}", alpha=0.8)
            ax.set_xticks(range(len(defenses)))
            ax.set_xticklabels([d.split(",")[0] for d in defenses], rotation=35, ha="right", fontsize=7)
            ax.set_xlabel("defense")
            ax.set_ylabel("ROUGE-1 F")
            ax.set_ylim(-0.05, 1.05)
            ax.legend(fontsize=5, ncol=2)
            ax.grid(alpha=0.3)

        return [Figure("exact-by-batch-size", "Exact-sequence rate against batch size", exact_by_batch),
                Figure("rouge1-by-defense", "ROUGE-1 per defense", rouge_by_defense)]
