"""IG (and ROG) speed on this machine's device: fedleak's batched optimisation against a plain
sequential reference loop, with the achieved fraction of the device's fp32 peak.

Scenarios (issue 14): ConvNet-64 and full-width ResNet-18 at 32 px with 1, 8 and 64 independent
payloads (one image each, known labels, one restart), ResNet-50 at 224 px with one payload, ROG on a
ResNet-18 at 128 px with one. For each: fedleak's ``Attack.run_many`` (every payload in one batched
optimisation) and the reference written here — one image, one restart at a time, the way inversefed
runs: a module, ``torch.autograd.grad(create_graph=True)``, a per-layer Python cosine, Adam, signed
step, clamp. fedleak's rate is read off the attack's own trace (the time between its first and last
traced step: set-up, the first step and the final scoring excluded), the reference's from its loop
after its first step. FLOPs per image-iteration are counted once with ``torch.utils.flop_counter``
on the reference step (the useful work; a batched step is charged the same per image), so the
achieved fraction is useful FLOP/s ÷ peak. The peak is the vendor's dense fp32 (non-tensor-core)
figure on a known CUDA GPU (``--peak-tflops`` otherwise) and, on a CPU, the rate of a large
``torch.mm`` measured in this run. ``--before SRC`` also times a batch-1 IG run of the fedleak
source tree at SRC against this one, alternating, in fresh processes (the "no slower at batch 1"
check). Prints a table and writes JSON named after the device.

    python benchmarks/devices.py [--device auto] [--n2 4] [--chunk 8] [--payloads 1,8,64]
        [--scenarios convnet64,resnet18,resnet50-224,rog-128] [--precision fp32] [--before /tmp/before]
        [--quality-images 4]
        [--out benchmarks/devices-<device>.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.device import device_name, resolve_device  # (what the --before tree has too)
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.models import create_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CLASSES = 10

FP32_PEAK_TFLOPS = {  # dense fp32 without tensor cores, vendor datasheets
    "H200": 67.0, "H100 PCIe": 51.0, "H100": 67.0, "A100": 19.5, "L40S": 91.6, "L4": 30.3, "A10": 31.2,
    "RTX 4090": 82.6, "RTX 3090": 35.6, "V100": 15.7, "T4": 8.1,
}


@dataclass(frozen=True)
class Scenario:
    name: str
    attack: str
    model: str
    size: int
    payloads: tuple[int, ...]
    settings: dict


SCENARIOS = {
    "convnet64": Scenario("ConvNet-64, 32 px", "ig", "convnet", 32, (1, 8, 64), {}),
    "resnet18": Scenario("ResNet-18, 32 px", "ig", "resnet18", 32, (1, 8, 64), {}),
    "resnet50-224": Scenario("ResNet-50, 224 px", "ig", "resnet50", 224, (1,), {}),
    "rog-128": Scenario("ROG, ResNet-18, 128 px", "rog", "resnet18", 128, (1,), {"scale": 2}),
}


def clients(s: Scenario, count: int, device: torch.device):
    """``count`` payloads of one full-width model (eval mode, FedSGD), one image each."""
    net = create_model(s.model, CLASSES, 3, s.size, width=1.0, seed=0).to(device)
    g = torch.Generator().manual_seed(1)
    client = Client(net, Normalization(MEAN, STD))
    payloads, knowledge = [], []
    for i in range(count):
        data = ClientData(torch.rand(1, 3, s.size, s.size, generator=g).to(device),
                          torch.tensor([i % CLASSES], device=device))
        payloads.append(client.update(data))
        knowledge.append(AttackerKnowledge(net, (3, s.size, s.size), CLASSES, MEAN, STD, labels=data.labels))
    return net, payloads, knowledge


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trace_rate(trace: list[dict], iterations: int) -> float:
    """Iterations per second between the first and the last traced step of the loop (set-up, the
    first step and the final scoring excluded; a traced step reads the loss back, so it is synchronised)."""
    rows = [r for r in trace if r["iteration"] < iterations]
    first, last = rows[0], rows[-1]
    return (last["iteration"] - first["iteration"]) / max(last["seconds"] - first["seconds"], 1e-9)


def fedleak_rate(s: Scenario, payloads, knowledge, iterations: int, precision: str, device,
                 chunk: int | None = None, log_every: int = 1) -> float:
    settings = {"iterations": iterations, "restarts": 1, "log_every": log_every, "precision": precision,
                "chunk": chunk, **s.settings}
    attack = build_attack(s.attack, settings)
    recs = attack.run_many(payloads, knowledge, list(range(len(payloads))))
    return trace_rate(recs[0].trace, iterations)


def reference_step_fn(net, payload, label, size: int, device):
    """The inversefed-style loop for one image and one restart: returns (x, step)."""
    model = copy.deepcopy(net).eval()
    params = [p for p in model.parameters()]
    targets = [payload.update[n] for n, _ in model.named_parameters()]
    tnorm = sum(t.pow(2).sum() for t in targets).sqrt()
    m = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    sd = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    lo, hi = (0 - m) / sd, (1 - m) / sd
    x = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), label)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, targets))
        gnorm = sum(g.pow(2).sum() for g in grads).sqrt()
        tv = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        total = 1 - dot / (gnorm * tnorm) + 1e-3 * tv
        total.backward()
        x.grad.sign_()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))

    return x, step


def reference_rate(net, payloads, iterations: int, size: int, device) -> float:
    """One payload through the reference loop, its first step excluded (a sequential loop's rate
    does not depend on how many payloads wait their turn)."""
    _, step = reference_step_fn(net, payloads[0], torch.tensor([0], device=device), size, device)
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations - 1):
        step()
    sync(device)
    return (iterations - 1) / (time.perf_counter() - start)


def flops_per_image_iteration(net, payload, size: int, device) -> int:
    _, step = reference_step_fn(net, payload, torch.tensor([0], device=device), size, device)
    step()  # warm
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def measured_cpu_peak() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def device_peak(device: torch.device, given: float | None) -> tuple[float, str]:
    if given:
        return given * 1e12, "given (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(FP32_PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                return FP32_PEAK_TFLOPS[key] * 1e12, f"datasheet fp32 of {key}"
        return float("nan"), f"unknown GPU {name!r}: pass --peak-tflops"
    return measured_cpu_peak(), "measured 2048² torch.mm in this run"


def batch1_worker(args) -> None:
    """One process, one source tree: a batch-1 IG rate (printed as JSON)."""
    device = resolve_device(args.device)
    s = Scenario(args.worker_model, "ig", args.worker_model, 32, (1,), {})
    net = create_model(s.model, CLASSES, 3, 32, width=args.worker_width, seed=0).to(device)
    client = Client(net, Normalization(MEAN, STD))
    data = ClientData(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device),
                      torch.tensor([3], device=device))
    payload = client.update(data)
    know = AttackerKnowledge(net, (3, 32, 32), CLASSES, MEAN, STD, labels=data.labels)

    def its(n: int) -> float:
        return trace_rate(build_attack("ig", {"iterations": n, "restarts": 1, "log_every": 1}).run(payload, know).trace, n)

    its(2)
    print(json.dumps({"its_per_s": max(its(args.n2 * 5) for _ in range(2))}))


def before_after(args, threads: int) -> list[dict]:
    """Batch-1 IG rates of the tree at ``--before`` and of this one, alternating, fresh processes."""
    here = Path(__file__).resolve().parents[1] / "src"
    rows = []
    for model, width in (("convnet", 0.25), ("resnet18", 1.0)):
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for label, src in (("before", Path(args.before) / "src"), ("after", here)):
                env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
                out = subprocess.run([sys.executable, __file__, "--worker", "--device", args.device, "--worker-model",
                                      model, "--worker-width", str(width), "--n2", str(args.n2)],
                                     env=env, capture_output=True, text=True, check=True)
                rates[label].append(json.loads(out.stdout.strip().splitlines()[-1])["its_per_s"])
        b, a = max(rates["before"]), max(rates["after"])
        rows.append({"model": f"{model} width {width}", "before_its_per_s": round(b, 3), "after_its_per_s": round(a, 3),
                     "after_over_before": round(a / b, 3), "all": rates})
    return rows


def precision_quality(args) -> list[dict]:
    """PSNR/SSIM of the same IG runs at fp32 and at tf32 (the effect of ``attack.precision``): the
    sample images, ConvNet-16 (the default job's model) and a full ResNet-18, 32 px, 1,200
    iterations, seeds fixed."""
    from fedleak.config import build_config
    from fedleak.pipeline import run

    rows = []
    for model, width in (("convnet", 0.25), ("resnet18", 1.0)):
        for index in range(args.quality_images):
            scores = {}
            for precision in ("fp32", "tf32"):
                config = build_config(flags={"data.name": "samples", "data.index": [index], "data.image_size": 32,
                                             "model.name": model, "model.width": width, "attack.name": "ig",
                                             "attack.precision": precision, "client.seed": 0, "seed": 0,
                                             "device": args.device})
                result = run(config)
                scores[precision] = (result.evaluation.psnr, result.evaluation.ssim)
            rows.append({"model": f"{model} width {width}", "image": index,
                         "psnr_fp32": round(scores["fp32"][0], 3), "psnr_tf32": round(scores["tf32"][0], 3),
                         "ssim_fp32": round(scores["fp32"][1], 4), "ssim_tf32": round(scores["tf32"][1], 4)})
            r = rows[-1]
            print(f"precision, {r['model']}, image {index}: PSNR fp32 {r['psnr_fp32']} / tf32 {r['psnr_tf32']} dB",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n2", type=int, default=None, help="timed iterations per rate (CPU 4, GPU 50)")
    parser.add_argument("--log-every", type=int, default=None, help="attack.log_every while timing (CPU 1, GPU 10)")
    parser.add_argument("--payloads", default=None, help="override the payload counts, e.g. 1,8")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32"])
    parser.add_argument("--chunk", type=int, default=None,
                        help="attack.chunk: trials through the model at once (default: all on a GPU, 8 on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--before", default=None, help="a fedleak source tree to compare batch-1 IG with")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of --before")
    parser.add_argument("--quality-images", type=int, default=0,
                        help="also compare PSNR at fp32 and tf32 on this many sample images (1,200 IG iterations each)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-model", default="convnet", help=argparse.SUPPRESS)
    parser.add_argument("--worker-width", type=float, default=0.25, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.n2 = args.n2 or (50 if gpu else 4)
    args.log_every = args.log_every or (10 if gpu else 1)
    args.chunk = args.chunk or (None if gpu else 8)
    if args.worker:
        return batch1_worker(args)
    from fedleak.device import peak_memory
    peak, peak_source = device_peak(device, args.peak_tflops)
    rows = []
    for key in args.scenarios.split(","):
        s = SCENARIOS[key]
        counts = tuple(int(c) for c in args.payloads.split(",")) if args.payloads else s.payloads
        counts = tuple(c for c in counts if c in s.payloads or args.payloads)
        net, payloads, knowledge = clients(s, max(counts), device)
        flops = flops_per_image_iteration(net, payloads[0], s.size, device)
        ref = reference_rate(net, payloads, args.n2 + 1, s.size, device)
        for count in counts:
            ps, ks = payloads[:count], knowledge[:count]
            fedleak_rate(s, ps, ks, 2, args.precision, device, args.chunk)  # warm-up (kernels, allocator)
            with peak_memory(device) as memory:
                its = fedleak_rate(s, ps, ks, args.n2 + 1, args.precision, device, args.chunk, args.log_every)
            image_its = its * count
            rows.append({
                "scenario": s.name, "attack": s.attack, "payloads": count,
                "its_per_s": round(its, 4), "image_its_per_s": round(image_its, 4),
                "reference_image_its_per_s": round(ref, 4), "speedup_vs_reference": round(image_its / ref, 3),
                "seconds_for_1200_its": round(1200 / its, 1),
                "gflop_per_image_it": round(flops / 1e9, 3),
                "peak_fraction": round(image_its * flops / peak, 4) if peak == peak else None,
                "reference_peak_fraction": round(ref * flops / peak, 4) if peak == peak else None,
                "peak_memory_bytes": memory.get("bytes"), "peak_memory_kind": memory.get("kind"),
            })
            r = rows[-1]
            print(f"{s.name:24} P={count:3}  {r['its_per_s']:9.3f} it/s  {r['image_its_per_s']:9.3f} img-it/s  "
                  f"ref {r['reference_image_its_per_s']:8.3f}  ×{r['speedup_vs_reference']:6.2f}  "
                  f"peak {r['peak_fraction']}  1200 it: {r['seconds_for_1200_its']} s", flush=True)
    quality = precision_quality(args) if args.quality_images else None
    threads = torch.get_num_threads()
    comparison = before_after(args, threads) if args.before else None
    for row in comparison or []:
        print(f"batch 1, {row['model']}: before {row['before_its_per_s']} it/s, after {row['after_its_per_s']} it/s "
              f"(×{row['after_over_before']})")
    name = torch.cuda.get_device_name(device) if gpu else (platform.processor() or platform.machine())
    result = {
        "device": device_name(device), "device_name": name, "torch": torch.__version__, "threads": threads,
        "cpu_count": os.cpu_count(), "precision": args.precision, "chunk": args.chunk, "timed_iterations": args.n2, "log_every": args.log_every,
        "peak_flops": peak, "peak_source": peak_source, "rows": rows, "batch1_before_after": comparison,
        "precision_quality": quality,
        "method": "fedleak: iterations/s between the first and last traced step of one run (set-up, first step "
                  "and final scoring excluded); reference: its loop after the first step; FLOPs per image-iteration "
                  "counted on the reference step (torch.utils.flop_counter)",
    }
    label = device_name(device).replace(":", "")
    out = Path(args.out or Path(__file__).with_name(f"devices-{label}.json"))
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
