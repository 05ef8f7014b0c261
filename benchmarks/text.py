"""Text leakage through fedleak's pipeline (issue #26): DAGER's exact-sequence rate, ROUGE-1/2, token
accuracy, PII recovered and seconds per batch, with TAG beside it on the same batches, LoRA beside full
fine-tuning, and under DP noise.

Each cell is one ``fedleak.pipeline.run`` of the ``pii`` dataset (synthetic sentences carrying names,
e-mails, card numbers; GPT-2 tokenizer) cut to ``T`` tokens, a FedSGD client with a batch of ``B``
sequences and next-token loss, on a random-init GPT-2-shaped model (``--model``, default
``gpt2-small-shape``: 12 layers, d = 768, V = 50257). ``client.seed = k`` picks the batch, so the same
seed gives DAGER, TAG and every variant the same sentences. Variants: ``full`` (every weight trained),
``lora`` (``model.options.lora.r = R``; the update holds only the adapters; DAGER is exact through LoRA
only while B·T < r), ``noise`` (``client.defense = SPEC``, default ``noise:snr_db=40``). Printed per
cell (mean over seeds): exact rate (share of the batch's sequences recovered token for token), ROUGE-1/2
and token accuracy of the matched reconstructions, PII spans recovered, the no-leak ROUGE-1 (every
original scored against an unrelated sentence of the corpus: ``baselines.other_text.rouge1``) and the
attack's seconds per batch (``attack_seconds``; the run's other work excluded). A TAG row also gives
its ROUGE-1 over DAGER's on the same batches and variant (``r1_vs_dager``), and a LoRA / noise row its
exact rate beside the full row's (``exact_full``).

The JSON (``--out``) is rewritten after every cell, so an interrupted run keeps what finished;
``--resume`` skips cells already in it. ``--merge A.json B.json`` only combines earlier outputs (their
rows, later files winning) into ``--out`` and prints the table.

    python benchmarks/text.py                              # the issue's grid (hours on a CPU)
    python benchmarks/text.py --batches 1 4 8 16 --lengths 32 --attacks dager --seeds 1
    python benchmarks/text.py --attacks tag --tag-iterations 50 --batches 1 4 --lengths 32
    python benchmarks/text.py --model gpt2-tiny --batches 1 4 8 16 32 --lengths 16 32 64 --lora 256 --noise
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from fedleak.config import build_config
from fedleak.modalities import MODALITIES
from fedleak.pipeline import run

KEYS = ("exact_rate", "rouge1", "rouge2", "token_accuracy", "pii_recovered", "attack_seconds")


def cell_config(args: argparse.Namespace, attack: str, b: int, t: int, variant: str, seed: int) -> dict[str, Any]:
    """The overrides of one run (``fedleak.config.build_config``'s dotted keys)."""
    over: dict[str, Any] = {"data.name": "pii", "model.name": args.model, "attack.name": attack,
                            "client.batch_size": b, "data.options": {"seq_len": t}, "client.seed": seed}
    if attack == "tag":
        over["attack.iterations"] = args.tag_iterations
    for item in args.set:  # --set KEY=VALUE, the value read as JSON where it parses
        key, _, value = item.partition("=")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    if variant == "lora":
        over["model.options"] = {"lora": {"r": args.lora}}
    elif variant == "noise":
        over["client.defense"] = args.noise
    return over


def run_cell(over: dict[str, Any]) -> dict[str, Any]:
    """One pipeline run: its metrics (texts left out), the no-leak baseline and the attack's notes."""
    result = run(build_config(None, over, []))
    m = result.metrics()
    base = m.get("baselines") or MODALITIES.get(result.modality).baselines(result.truth, result.dataset)
    other = (base or {}).get("other_text") or {}
    return {**{k: m.get(k) for k in KEYS}, "other_rouge1": other.get("rouge1"), "seconds_total": m.get("seconds"),
            "exact_sequences": m.get("exact_sequences"), "sequences": m.get("sequences"),
            "hints": [h[:300] for h in m.get("hints", [])]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of every scored key (``None`` where no seed has it)."""
    out: dict[str, Any] = {}
    for k in (*KEYS, "other_rouge1"):
        vals = [float(r[k]) for r in runs if r.get(k) is not None]
        out[k] = statistics.mean(vals) if vals else None
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """TAG's ROUGE-1 over DAGER's on the same cell; a LoRA / noise row's exact rate beside full's."""
    key = {(r["model"], r["attack"], r["B"], r["T"], r["variant"], tuple(r["seeds"])): r for r in rows
           if not r.get("set")}  # the references: rows of the attacks' default settings
    for r in rows:
        same = (r["model"], "dager", r["B"], r["T"], r["variant"], tuple(r["seeds"]))
        d = key.get(same)
        if r["attack"] == "tag" and d and d["rouge1"]:
            r["dager_rouge1"], r["r1_vs_dager"] = d["rouge1"], r["rouge1"] / d["rouge1"]
        full = key.get((r["model"], r["attack"], r["B"], r["T"], "full", tuple(r["seeds"])))
        if r["variant"] != "full" and full:
            r["exact_full"] = full["exact_rate"]


def fmt(v: Any, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':17} {'attack':6} {'B':>3} {'T':>3} {'variant':13} {'exact':>5} {'R-1':>5} {'R-2':>5} "
            f"{'tok':>5} {'PII':>5} {'noleak':>6} {'s/batch':>8}  extra")
    print(head)
    for r in rows:
        extra = []
        if "r1_vs_dager" in r:
            extra.append(f"R-1/DAGER {r['r1_vs_dager']:.2f}")
        if "exact_full" in r:
            extra.append(f"exact(full) {fmt(r['exact_full'])}")
        errors = [x["error"] for x in r.get("runs", []) if "error" in x]
        if errors:
            extra.append(f"{len(errors)} failed: {errors[0][:60]}")
        print(f"{r['model']:17} {r['attack']:6} {r['B']:3} {r['T']:3} {r['variant_label']:13} {fmt(r['exact_rate']):>5} "
              f"{fmt(r['rouge1']):>5} {fmt(r['rouge2']):>5} {fmt(r['token_accuracy']):>5} {fmt(r['pii_recovered']):>5} "
              f"{fmt(r['other_rouge1']):>6} {fmt(r['attack_seconds'], '.1f'):>8}  {', '.join(extra)}", flush=True)


def write(path: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    add_ratios(rows)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    os.replace(tmp, path)


def cells(args: argparse.Namespace) -> list[tuple[str, int, int, str]]:
    """(attack, B, T, variant) in the order run: by length, batch size, attack, then variant."""
    variants = ["full"] + (["lora"] if args.lora else []) + (["noise"] if args.noise else [])
    return [(a, b, t, v) for t in args.lengths for b in args.batches for a in args.attacks for v in variants]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small-shape")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--attacks", nargs="+", default=["dager", "tag"], choices=["dager", "tag"])
    parser.add_argument("--seeds", type=int, default=3, help="batches per cell: client.seed = 0 … seeds-1")
    parser.add_argument("--tag-iterations", type=int, default=300, help="TAG's optimisation steps")
    parser.add_argument("--lora", type=int, nargs="?", const=256, default=256,
                        help="LoRA rank of the 'lora' variant (0: no LoRA rows)")
    parser.add_argument("--noise", nargs="?", const="noise:snr_db=40", default="noise:snr_db=40",
                        help="defense spec of the 'noise' variant ('' : no noise rows)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra override of every run, e.g. attack.budget=100000 (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--resume", action="store_true", help="keep --out's rows and skip their cells")
    parser.add_argument("--merge", nargs="+", help="only combine these JSON outputs into --out and print the table")
    parser.add_argument("--out", default="benchmarks/text.json")
    args = parser.parse_args()
    if args.merge:
        merged: dict[tuple, dict[str, Any]] = {}
        metas = []
        for path in args.merge:
            with open(path) as f:
                data = json.load(f)
            metas.append({k: v for k, v in data.items() if k != "rows"})
            for r in data["rows"]:
                merged[(r["model"], r["attack"], r["B"], r["T"], r["variant"], r.get("variant_label"),
                        tuple(r["seeds"]), tuple(r.get("set", [])))] = r  # the label tells noise levels apart
        rows = list(merged.values())
        write(args.out, rows, {"merged_from": args.merge, "parts": metas})
        table(rows)
        return
    torch.set_num_threads(args.threads)
    rows = []
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"]
    done = {(r["model"], r["attack"], r["B"], r["T"], r["variant"]) for r in rows}
    meta = {"command": " ".join(["python", "benchmarks/text.py", *sys.argv[1:]]), "model": args.model,
            "dataset": "pii", "protocol": "fedsgd", "tag_iterations": args.tag_iterations, "lora_r": args.lora,
            "noise": args.noise, "set": args.set, "seeds": args.seeds, "threads": args.threads, "machine": platform.processor()
            or platform.machine(), "cpus": os.cpu_count()}
    started = time.perf_counter()
    for attack, b, t, variant in cells(args):
        if (args.model, attack, b, t, variant) in done:
            continue
        seeds = list(range(args.seeds))
        runs = []
        for k in seeds:
            over = cell_config(args, attack, b, t, variant, k)
            try:
                runs.append({"seed": k, **run_cell(over)})
            except Exception as exc:  # a failing cell is recorded, and the grid goes on
                runs.append({"seed": k, "error": f"{type(exc).__name__}: {exc}"})
                print(f"{attack} B={b} T={t} {variant} seed {k}: {runs[-1]['error']}", flush=True)
        label = {"full": "full", "lora": f"LoRA r={args.lora}", "noise": args.noise.replace("noise:", "noise ")}[variant]
        label += "".join(f" {item.removeprefix('attack.')}" for item in args.set)
        row = {"model": args.model, "attack": attack, "B": b, "T": t, "variant": variant, "variant_label": label,
               "seeds": seeds, "set": args.set, **summarise(runs), "runs": runs, "overrides": cell_config(args, attack, b, t, variant, 0)}
        rows.append(row)
        meta["seconds"] = time.perf_counter() - started
        write(args.out, rows, meta)
        table([row])
    print()
    table(rows)
    print(f"{time.perf_counter() - started:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
