"""The ``ray`` backend: a study's runs as Ray tasks, on this machine or on the user's cluster.

Without an address, Ray starts here with the machine's cores (and the GPUs Ray finds) and stops when
the study ends. With one it joins a running cluster: ``auto`` or ``HOST:6379`` from a node of the
cluster (started with ``ray start --head``), ``ray://HOST:10001`` through Ray Client from anywhere.
When this process already called ``ray.init`` (a notebook, a test), that session is used and left
running.

Each run is one task reserving ``cpus_per_run`` CPU cores (its torch threads) and ``gpus_per_run``
GPUs (Ray hides the others from it, so a CPU-only run never lands on a GPU; a run's ``device`` is
resolved in its task: ``auto`` there is its GPU when it reserves one, and ``cuda`` without
``gpus_per_run`` is refused before the study starts, :meth:`RayBackend.check_device`); at most ``capacity``
tasks are in flight, as many as the cluster's resources hold (or ``workers``), and the driver
commits each outcome as it arrives. Tasks run :func:`fedleak.pipeline.attempt`, so a run that raises
comes back as an outcome with its error and the others go on; a worker or node that dies is retried
by Ray (``MAX_RETRIES``), then recorded as failed. The workers need fedleak installed and the data
where the run's config says (a shared filesystem, or ``FEDLEAK_DATA`` set on every node).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import uuid
import warnings
from collections.abc import Callable, Hashable
from typing import Any

from fedleak.errors import ConfigError, FedleakError
from fedleak.pipeline import Outcome, RunSpec, attempt
from fedleak.studies.backends import Backend

MAX_RETRIES = 2  # system failures only (a worker or node died); a run's own error is never retried here


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"the ray backend needs Ray ({exc}): pip install 'fedleak[ray]'") from None
    return ray


@functools.lru_cache(maxsize=4)
def _cached_load(*args: Any, **kwargs: Any) -> Any:
    """Each worker process keeps the datasets it loaded, so its next run on them starts at once."""
    from fedleak.data import load_dataset

    return load_dataset(*args, **kwargs)


_session: list[str] = [""]  # the study invocation whose datasets this worker's cache holds


def run_task(spec: RunSpec, detail: bool, threads: int, session: str) -> Outcome:
    """The body of one Ray task: the run with ``threads`` torch threads, its error captured. A new
    ``session`` (another study invocation) empties the worker's dataset cache: the files may have
    changed in between."""
    import torch

    if _session[0] != session:
        _cached_load.cache_clear()
        _session[0] = session
    torch.set_num_threads(threads)
    return attempt(spec, loader=_cached_load, detail=detail)


CONNECT_SECONDS = 10.0  # how long a cluster's address may take to answer before it counts as unreachable


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, when a ``HOST:PORT`` or ``ray://HOST[:PORT]`` address does not
    answer: Ray itself would retry for minutes, printing as it goes. ``auto`` is Ray's to resolve."""
    import socket

    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = (text, "10001") if address.startswith("ray://") else ("", "")
    if not host or not port.isdigit():
        if address.startswith("ray://") or ":" in address:
            raise ConfigError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
        return  # "auto" and the like
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise FedleakError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}") from None


class RayBackend(Backend):
    """Runs as Ray tasks. ``num_cpus`` / ``num_gpus`` size a Ray started here (default: the machine)."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0.0,
                 workers: int | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        if cpus_per_run < 1 or gpus_per_run < 0 or (workers is not None and workers < 1):
            raise ConfigError("a Ray run needs cpus_per_run ≥ 1, gpus_per_run ≥ 0 and workers ≥ 1")
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.workers, self.num_cpus, self.num_gpus = workers, num_cpus, num_gpus
        self._owned = False
        self._pending: dict[Any, str] = {}  # object ref → run key
        self._task: Any = None
        self._resources: dict[str, float] = {}
        self._token = ""

    def start(self, loader: Callable) -> None:
        ray = _ray()
        if not ray.is_initialized():
            self._init(ray)
        self._resources = dict(ray.cluster_resources())
        cpus, gpus = self._resources.get("CPU", 0.0), self._resources.get("GPU", 0.0)
        slots = math.floor(cpus / self.cpus_per_run + 1e-9)
        if self.gpus_per_run:
            slots = min(slots, math.floor(gpus / self.gpus_per_run + 1e-9))
        if slots < 1:
            self.close()
            raise ConfigError(f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs, not enough for one run "
                              f"({self.cpus_per_run} CPUs and {self.gpus_per_run:g} GPUs each)")
        self.capacity = min(slots, self.workers) if self.workers else slots
        self._token = uuid.uuid4().hex
        self._task = ray.remote(run_task).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                  max_retries=MAX_RETRIES)

    def _init(self, ray: Any) -> None:
        if self.address:
            _check_reachable(self.address)
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about a future default
            try:
                if self.address:
                    ray.init(address=self.address, **quiet)
                else:
                    ray.init(num_cpus=self.num_cpus or os.cpu_count(), num_gpus=self.num_gpus, **quiet)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = f"join the Ray cluster at {self.address!r}" if self.address else "start Ray here"
                raise FedleakError(f"cannot {where}: {exc}") from None
        self._owned = True

    def check_device(self, device: str) -> None:
        """Refuse, before anything runs, a ``cuda`` device no task could see: Ray shows a task only the
        GPUs it reserves (``gpus_per_run``, numbered from ``cuda:0``) and none when it reserves none.
        ``auto``, ``cpu`` and ``mps`` are resolved by each task on its node (``auto`` is the CPU in a
        task that reserves no GPU)."""
        kind, _, index = device.partition(":")
        if kind != "cuda" or os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "0") not in ("", "0"):
            return  # with NOSET, Ray leaves CUDA_VISIBLE_DEVICES alone: each task sees the node's GPUs
        visible = math.ceil(self.gpus_per_run - 1e-9)
        if visible == 0:
            raise ConfigError(f"the runs ask for device {device!r}, but a Ray task that reserves no GPU sees none: "
                              "give --gpus-per-run (e.g. 1 or 0.5), or --device auto")
        if int(index or 0) >= visible:
            raise ConfigError(f"device {device!r}: a Ray task sees only the {visible} GPU(s) it reserves "
                              f"(--gpus-per-run {self.gpus_per_run:g}), as cuda:0 … cuda:{visible - 1}")

    def submit(self, spec: RunSpec, detail: bool = False) -> Hashable:
        ref = self._task.remote(spec, detail, max(1, int(self.cpus_per_run)), self._token)
        self._pending[ref] = spec.key
        return ref

    def collect(self, timeout: float | None = None) -> list[tuple[Hashable, Outcome]]:
        if not self._pending:
            return []
        ray = _ray()
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # and whatever else has finished meanwhile
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = []
        for ref in ready:
            key = self._pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker or node died, the task was cancelled
                from fedleak.pipeline import describe_error

                outcome = Outcome(key, error=f"ray: {describe_error(exc)}")
            done.append((ref, outcome))
        return done

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            for ref in list(self._pending):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort: the task may have just finished
                    pass
        self._pending.clear()
        if self._owned:
            ray.shutdown()
            self._owned = False

    def describe(self) -> str:
        cpus, gpus = self._resources.get("CPU", 0.0), self._resources.get("GPU", 0.0)
        where = self.address or "started here"
        return (f"ray ({where}: {cpus:g} CPUs, {gpus:g} GPUs; {self.capacity} runs at a time, "
                f"{self.cpus_per_run} CPU{'s' if self.cpus_per_run > 1 else ''}"
                + (f" and {self.gpus_per_run:g} GPU" if self.gpus_per_run else "") + " each)")
