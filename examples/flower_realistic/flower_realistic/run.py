"""One command: ``python -m flower_realistic.run`` (from this app's folder) runs the federation with
Flower's simulation (``flwr run . --stream``), plain and audited, and prints what it measured.

Options: ``--clients N`` (default 10), ``--out DIR`` (default ``./report``), ``--data-root DIR``
(default ``../../../shared/data/cifar-10-batches-py``, i.e. the project's ``../shared/data``) and
``--run-config "key=value …"`` for any other entry of ``[tool.flwr.app.config]``. Exits 0 with a
message, running nothing, when the CIFAR-10 folder is absent."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1]
DATA = APP / "../../../shared/data/cifar-10-batches-py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--out", type=Path, default=APP / "report")
    parser.add_argument("--data-root", type=Path, default=DATA)
    parser.add_argument("--run-config", default="", help='more run-config overrides, e.g. "num-server-rounds=2"')
    args = parser.parse_args(argv)
    data, out = args.data_root.expanduser().resolve(), args.out.expanduser().resolve()
    if not (data / "data_batch_1").is_file() or not (data / "test_batch").is_file():
        print(f"skipped: no CIFAR-10 at {data} (data_batch_1 and test_batch; pass --data-root)")
        return 0
    config = f"out='{out}' data-root='{data}' {args.run_config}".strip()
    federation = f"num-supernodes={args.clients} client-resources-num-cpus=1 init-args-num-cpus=2"
    env = os.environ | {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # run in this environment
    (out / "timings.json").unlink(missing_ok=True)
    done = subprocess.run(["flwr", "run", str(APP), "--stream", "--federation-config", federation,
                           "--run-config", config], env=env, check=False)
    timings_file = out / "timings.json"
    if done.returncode != 0 or not timings_file.is_file():
        print(f"the federation did not finish (flwr exited {done.returncode}); nothing measured", file=sys.stderr)
        return done.returncode or 1
    t = json.loads(timings_file.read_text())
    plain, audited = t["without_audit"], t["with_audit"]
    print(f"\n{t['clients']} clients × {t['examples_per_client']} images, {t['rounds']} rounds "
          f"({t['audited_updates']} audited updates)")
    print(f"rounds without audit: {plain['rounds_s']:7.1f} s  (per round {', '.join(f'{s:.1f}' for s in plain['per_round_s'])})")
    print(f"rounds with audit:    {audited['rounds_s']:7.1f} s  (per round {', '.join(f'{s:.1f}' for s in audited['per_round_s'])})")
    print(f"ratio:                {t['ratio']:7.2f}×")
    print(f"audit set-up:         {t['audit_setup_s']:7.1f} s; after the last round, waiting for the audits "
          f"and writing the report: {audited['after_rounds_s']:.1f} s")
    print(f"test accuracy after each round: plain {plain['test_accuracy']}, audited {audited['test_accuracy']}")
    print(f"results: fedleak runs list {out / 'audit'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
