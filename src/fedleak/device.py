"""Where a run computes: the ``device`` setting (``auto | cpu | cuda | cuda:N | mps``).

The setting is resolved once, at the start of a run, into a :class:`torch.device`; every part of the
run then takes its device from that (the model's parameters, the client's batch, the payload's
tensors), so nothing below the run looks at the setting again. ``auto`` picks CUDA when present,
else MPS, else the CPU. Asking for a device this machine lacks is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fedleak.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""The spellings the ``device`` setting accepts (checked when a config is validated)."""


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _auto() -> torch.device:
    if _cuda_count():
        return torch.device("cuda", 0)
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cuda(index: int) -> torch.device:
    count = _cuda_count()
    if not count:
        raise ConfigError("device 'cuda' is not available here (torch sees no CUDA GPU); use --device cpu or auto")
    if index >= count:
        raise ConfigError(f"device 'cuda:{index}' is not available here (torch sees {count} CUDA GPU(s))")
    return torch.device("cuda", index)


def _mps() -> torch.device:
    if not _mps_available():
        raise ConfigError("device 'mps' is not available here (no Apple-silicon GPU); use --device cpu or auto")
    return torch.device("mps")


_RESOLVERS: dict[str, Callable[[int], torch.device]] = {
    "auto": lambda _: _auto(),
    "cpu": lambda _: torch.device("cpu"),
    "cuda": _cuda,
    "mps": lambda _: _mps(),
}


def check_device(name: str) -> str:
    """``name`` if it is a spelling of the setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``);
    whether this machine has it is checked only when a run resolves it."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name.strip()):
        raise ValueError(f"device must be auto | cpu | cuda | cuda:N | mps (got {name!r})")
    return name.strip()


def resolve_device(name: str | torch.device) -> torch.device:
    """The :class:`torch.device` the setting ``name`` stands for on this machine (``cuda`` is
    ``cuda:0``); a device this machine lacks is a one-line :class:`ConfigError`."""
    if isinstance(name, torch.device):
        name = str(name)
    try:
        kind, _, index = check_device(name).partition(":")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _RESOLVERS[kind](int(index or 0))


def device_name(device: torch.device) -> str:
    """How a resolved device is recorded in ``config.yaml`` and ``metrics.json``: ``cpu``, ``cuda:0``, ``mps``."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0}"
    return device.type


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module holding neither)."""
    for tensor in module.parameters():
        return tensor.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded :class:`torch.Generator` on ``device``, so random draws are made where they are used.
    (CUDA's generator gives a different stream from the CPU's: a seed reproduces a run on one device.)"""
    return torch.Generator(device=device).manual_seed(seed)


def payload_device(payload: object) -> torch.device:
    """The device an attack works on: where the observed update lies (the CPU for an empty one)."""
    for tensor in getattr(payload, "update", {}).values():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Measure the block's peak memory on ``device``; the dict it yields is filled on exit with
    ``bytes`` and ``kind``: on CUDA the peak of tensor memory allocated during the block
    (``torch.cuda.max_memory_allocated``, reset at entry), elsewhere the process's peak resident set
    so far (``ru_maxrss``: an upper bound that includes everything before the block)."""
    found: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield found
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            found.update(bytes=int(torch.cuda.max_memory_allocated(device)), kind="cuda-allocated")
        else:
            found.update(bytes=_peak_rss(), kind="process-peak-rss")


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


PRECISIONS: dict[str, tuple[bool, str]] = {
    "fp32": (False, "highest"),
    "tf32": (True, "high"),
}
"""``attack.precision`` → (TF32 allowed in cuBLAS/cuDNN, ``torch.set_float32_matmul_precision``)."""


@contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """Run the block with float32 matrix products and convolutions in full fp32 (``fp32``) or, on
    NVIDIA GPUs from Ampere on, in TF32 (``tf32``: 10-bit mantissa inputs, fp32 accumulation — much
    faster, slightly less exact). The previous settings are restored afterwards. On a CPU both are
    plain fp32."""
    tf32, matmul = PRECISIONS[name]
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    cuda.allow_tf32, cudnn.allow_tf32 = tf32, tf32
    torch.set_float32_matmul_precision(matmul)
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])
