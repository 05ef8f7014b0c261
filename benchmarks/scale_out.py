"""One study grid on the ``local`` backend against the ``ray`` backend at 1, 2, … workers, and the
per-run overhead of the Ray path on tiny runs.

Part 1 — a small ``tv`` study grid (ConvNet on CIFAR-10 from ../shared/data, or scikit-image's
samples where that is absent): wall time of the whole ``run_study`` (planning, runs, report) on
``local`` (one run after another in this process, with 1 torch thread and with all cores) and on a
fresh local Ray of W CPUs (W runs at a time, one thread each), Ray's start-up included, as ratios to
``local`` with 1 thread. Part 2 — many tiny runs (LeNet, 8 px, one iteration) once the workers are
warm: (ray − local) / runs is what the Ray path adds to every run (a task round trip, pickling the
spec and the images, committing). Prints a table and writes JSON; the claims are the ratios within
this run, not the absolute seconds.

    python benchmarks/scale_out.py [--workers 1,2] [--alphas 4] [--images 2] [--iterations 100]
                                   [--tiny-runs 40] [--out benchmarks/scale_out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fedleak.report.study import write_report
from fedleak.studies import build_study, run_study
from fedleak.studies.backends import LocalBackend

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def study(alphas: int, images: int, iterations: int, tiny: bool = False, offset: int = 0):
    data = [f"root={SHARED}", "dataset=cifar10"] if (SHARED / "cifar-10-batches-py").is_dir() else ["dataset=samples"]
    model = ["model=lenet", "width=1.0", "image_size=8"] if tiny else ["model=convnet", "width=0.25"]
    grid = [round(0.001 * (a + offset), 6) for a in range(alphas)]
    return build_study("tv", "cpu", overrides=[*data, *model, f"alphas={grid}", f"images={list(range(images))}",
                                               f"attack.iterations={iterations}", "client_seed=0"])


def timed(s, backend, folder: Path) -> float:
    start = time.perf_counter()
    outcome = run_study(s, "cpu", folder, progress=False, backend=backend)
    write_report(folder)  # as `fedleak study` does after the runs
    seconds = time.perf_counter() - start
    if outcome.failed:
        raise SystemExit(f"runs failed: {outcome.failed[0].error}")
    return seconds


def ray_backend(workers: int):
    """A Ray backend of ``workers`` CPUs: it starts Ray itself unless this process already did."""
    from fedleak.integrations.ray import RayBackend

    return RayBackend(num_cpus=workers, workers=workers)


def start_ray(workers: int) -> float:
    import ray

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="Ray cluster sizes (CPUs = runs at a time)")
    parser.add_argument("--alphas", type=int, default=4)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--tiny-runs", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/scale_out.json")
    args = parser.parse_args()
    import ray

    workers = [int(w) for w in args.workers.split(",")]
    runs = args.alphas * args.images
    cores = os.cpu_count() or 1
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="fedleak-scale-out-"))
    load_before = os.getloadavg()  # other processes on the machine skew the parallel rows: recorded
    grid = study(args.alphas, args.images, args.iterations)
    torch.set_num_threads(1)
    rows.append({"backend": "local", "workers": 1, "threads": 1, "seconds": timed(grid, LocalBackend(), tmp / "local-1")})
    torch.set_num_threads(cores)
    rows.append({"backend": "local", "workers": 1, "threads": cores,
                 "seconds": timed(grid, LocalBackend(), tmp / f"local-{cores}")})
    torch.set_num_threads(1)
    for w in workers:  # a fresh Ray of w CPUs each time, started by the backend as the CLI does: counted
        backend = ray_backend(w)
        start = time.perf_counter()
        backend.start(loader=None)  # Ray's start-up alone (the study's own start reuses the session)
        startup = time.perf_counter() - start
        seconds = startup + timed(grid, backend, tmp / f"ray-{w}")
        rows.append({"backend": "ray", "workers": w, "threads": 1, "seconds": seconds, "ray_start_seconds": startup})
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio_to_local_1_thread"] = r["seconds"] / base

    # Part 2: the Ray path's overhead per run, workers warm, one worker against one local process.
    n = args.tiny_runs
    tiny = study(n, 1, 1, tiny=True)
    timed(study(2, 1, 1, tiny=True, offset=10_000), LocalBackend(), tmp / "tiny-warm-local")
    local_tiny = timed(tiny, LocalBackend(), tmp / "tiny-local")
    start_ray(1)
    timed(study(2, 1, 1, tiny=True, offset=10_000), ray_backend(1), tmp / "tiny-warm-ray")  # the worker imports
    ray_tiny = timed(tiny, ray_backend(1), tmp / "tiny-ray")
    ray.shutdown()
    overhead = {"runs": n, "local_seconds": local_tiny, "ray_seconds": ray_tiny,
                "local_per_run_ms": 1000 * local_tiny / n, "ray_per_run_ms": 1000 * ray_tiny / n,
                "ray_overhead_per_run_ms": 1000 * (ray_tiny - local_tiny) / n}

    print(f"study grid: tv, {runs} runs ({args.alphas} α × {args.images} images, {args.iterations} iterations); "
          f"{os.cpu_count()} cores")
    print(f"{'backend':8} {'workers':>7} {'threads':>7} {'seconds':>8} {'ratio':>6} {'of it Ray start':>15}")
    for r in rows:
        print(f"{r['backend']:8} {r['workers']:>7} {r['threads']:>7} {r['seconds']:>8.1f} "
              f"{r['ratio_to_local_1_thread']:>6.2f} {r.get('ray_start_seconds', 0):>15.1f}")
    print(f"tiny runs ({n}, warm): local {overhead['local_per_run_ms']:.0f} ms/run, ray (1 worker) "
          f"{overhead['ray_per_run_ms']:.0f} ms/run → Ray adds {overhead['ray_overhead_per_run_ms']:.0f} ms per run")
    result = {"settings": vars(args) | {"runs": runs, "cores": cores,
                                        "load_average_before": load_before, "load_average_after": os.getloadavg(),
                                        "python": sys.version.split()[0], "platform": platform.platform(),
                                        "ray": ray.__version__, "torch": torch.__version__,
                                        "data": "cifar10" if (SHARED / "cifar-10-batches-py").is_dir() else "samples"},
              "grid": rows, "overhead": overhead}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
