"""The ``ray`` backend: a study's runs as Ray tasks, on this machine or on the user's cluster.

Without an address, Ray starts here with the machine's cores (and the GPUs Ray finds) and stops when
the study ends. With one it joins a running cluster: ``auto`` or ``HOST:6379`` from a node of the
cluster (started with ``ray start --head``), ``ray://HOST:10001`` through Ray Client from anywhere.
When this process already called ``ray.init`` (a notebook, a test), that session is used and left
running.

``auto`` is a cluster running on this machine (``ray start --head``, or ``RAY_ADDRESS``): none is
one line at once, and the cluster joined is named with its size (a note).

Each run is one task reserving ``cpus_per_run`` CPU cores (its torch threads) and ``gpus_per_run``
GPUs (Ray hides the others from it, so a CPU-only run never lands on a GPU; a run's ``device`` is
resolved in its task: ``auto`` there is its GPU when it reserves one, and ``cuda`` without
``gpus_per_run`` is refused before the study starts, :meth:`RayBackend.check_device`); at most ``capacity``
tasks are in flight, as many as the cluster's resources hold now (or ``workers``): re-read as runs
finish and every few seconds, so nodes that join get runs, and a cluster that has no room yet (an
autoscaler's, starting empty) gets one queued run that waits for a node. The driver commits each
outcome as it arrives. Tasks run :func:`fedleak.run_unit.execute` with its error captured, so a run
that raises comes back as an outcome with its error and the others go on; a worker or node that dies
is retried by Ray (``MAX_RETRIES``), then recorded as failed.

The workers need fedleak installed and the data where the run's config says: a shared filesystem,
or ``FEDLEAK_DATA`` set on every node. A relative data root is made absolute on the driver (a worker's
working folder is not the driver's). A run whose data cannot be read on its node (the driver read it)
is tried again on another node that fits it, preferring nodes where runs succeeded, until none is left;
its failure records the host it last failed on.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Hashable
from typing import Any

from fedleak.errors import ConfigError, FedleakError
from fedleak.integrations.ray_task import absolute_roots, run_task
from fedleak.run_unit import Outcome, RunSpec, describe_error
from fedleak.studies.backends import BACKENDS, Backend, BackendOptions

MAX_RETRIES = 2  # system failures only (a worker or node died); a run's own error is never retried here


def _ray() -> Any:
    try:
        import ray  # optional dependency: fedleak[ray]
    except ImportError as exc:
        raise ConfigError(f"the ray backend needs Ray ({exc}): pip install 'fedleak[ray]'") from None
    return ray


CONNECT_SECONDS = 10.0  # how long a cluster's address may take to answer before it counts as unreachable
REFRESH_SECONDS = 2.0  # how old the cluster's resources may be when the capacity is asked
POLL_SECONDS = 5.0  # how often a wait for outcomes looks whether the cluster grew (room for more runs)


def _cluster_resources() -> dict[str, float]:
    """The cluster's resources now (nodes that joined or left included)."""
    return dict(_ray().cluster_resources())


def _alive_nodes() -> list[dict[str, Any]]:
    return [n for n in _ray().nodes() if n.get("Alive")]


def _find_auto() -> str:
    """The address ``auto`` means: ``RAY_ADDRESS``, else the cluster last started on this machine
    with ``ray start``, else one running here. None is a one-line error at once (Ray itself would
    wait minutes for a cluster that is not there)."""
    try:
        from ray._private import services  # optional dependency (fedleak[ray]), imported where used

        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise FedleakError("--address auto: no Ray cluster runs on this machine (start one with `ray start "
                           "--head`, give its HOST:PORT, or leave --address out to start Ray here)") from None
    except Exception:  # noqa: BLE001 - Ray's private helper changed: let ray.init resolve it
        return "auto"
    return found or "auto"


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, when a ``HOST:PORT`` or ``ray://HOST[:PORT]`` address does not
    answer: Ray itself would retry for minutes, printing as it goes. ``auto`` is Ray's to resolve."""
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


@dataclasses.dataclass
class _Task:
    """A run in flight: the ticket the driver knows it by, what to resubmit, the nodes it failed on."""

    ticket: int
    spec: RunSpec
    detail: bool
    tried: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (node id, host)


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
        self._started = False
        self._pending: dict[Any, _Task] = {}  # object ref → the run it computes
        self._tickets = itertools.count(1)
        self._task: Any = None
        self._options: dict[str, Any] = {}
        self._resources: dict[str, float] = {}
        self._read_at = -math.inf
        self._slots = 0
        self._good: set[str] = set()  # nodes where a run of this study succeeded
        self._told: set[str] = set()  # nodes the user was told lack a run's data
        self._token = ""
        self._where = address or "started here"

    def start(self, loader: Callable) -> None:
        ray = _ray()
        if not ray.is_initialized():
            self._init(ray)
        self._started = True
        slots = self._refresh(force=True)
        if slots < 1:
            cpus, gpus = self._resources.get("CPU", 0.0), self._resources.get("GPU", 0.0)
            short = (f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs, not enough for one run "
                     f"({self.cpus_per_run} CPUs and {self.gpus_per_run:g} GPUs each)")
            if _started_here(ray):  # nothing will join a Ray this process started
                self.close()
                raise ConfigError(short)
            self.say(f"{short}: one run waits for a node to join (an autoscaler adds nodes for waiting runs); "
                     "Ctrl-C stops", warn=True)
        self._token = uuid.uuid4().hex
        self._task = ray.remote(run_task)
        self._options = {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run, "max_retries": MAX_RETRIES}

    def _init(self, ray: Any) -> None:
        address = self.address
        if address == "auto":
            address = _find_auto()
        if address and address != "auto":
            try:
                _check_reachable(address)
            except FedleakError as exc:
                if self.address != "auto":
                    raise
                raise FedleakError(f"--address auto: the Ray cluster found at {address} (RAY_ADDRESS, or the "
                                   f"last `ray start` here) does not answer ({exc}); start one with `ray start "
                                   "--head`, or leave --address out to start Ray here") from None
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        main = threading.current_thread() is threading.main_thread()
        on_term = signal.getsignal(signal.SIGTERM) if main else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about a future default
            try:
                if address:
                    ray.init(address=address, **quiet)
                else:
                    ray.init(num_cpus=self.num_cpus or os.cpu_count(), num_gpus=self.num_gpus, **quiet)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = f"join the Ray cluster at {self.address!r}" if self.address else "start Ray here"
                raise FedleakError(f"cannot {where}: {exc}") from None
            finally:
                # ray.init makes SIGTERM exit at once (a C++ stack dump as Ray's threads die); a handler
                # of the caller's (the CLI's: stop, shut Ray down, one line) stays in charge.
                if callable(on_term):
                    signal.signal(signal.SIGTERM, on_term)
        self._owned = True
        if self.address:
            try:
                gcs = ray.get_runtime_context().gcs_address
            except Exception:  # noqa: BLE001 - Ray Client has no GCS address of its own
                gcs = None
            self._where = f"{self.address} = {gcs}" if gcs and gcs != self.address else self.address
            resources = _cluster_resources()
            try:
                nodes = len(_alive_nodes())
            except Exception:  # noqa: BLE001
                nodes = 0
            self.say(f"joined the Ray cluster at {gcs or self.address}: {nodes} node{'s' if nodes != 1 else ''}, "
                     f"{resources.get('CPU', 0.0):g} CPUs, {resources.get('GPU', 0.0):g} GPUs")

    def _refresh(self, force: bool = False) -> int:
        """How many runs the cluster's resources hold now (re-read when older than ``REFRESH_SECONDS``)."""
        now = time.monotonic()
        if force or now - self._read_at >= REFRESH_SECONDS:
            self._read_at = now
            self._resources = _cluster_resources()
            cpus, gpus = self._resources.get("CPU", 0.0), self._resources.get("GPU", 0.0)
            slots = math.floor(cpus / self.cpus_per_run + 1e-9)
            if self.gpus_per_run:
                slots = min(slots, math.floor(gpus / self.gpus_per_run + 1e-9))
            slots = max(slots, 0)
            if self._started and slots != self._slots and not force:
                self.say(f"the Ray cluster now has {cpus:g} CPUs and {gpus:g} GPUs: "
                         f"{min(slots, self.workers or slots)} runs at a time")
            self._slots = slots
        return self._slots

    @property
    def capacity(self) -> int:  # type: ignore[override]
        """Runs in flight at once: as many as the cluster holds now, at most ``workers``; one (waiting
        for a node) while it holds none."""
        slots = self._refresh() if self._started else self._slots
        return max(1, min(slots, self.workers) if self.workers else slots)

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
        task = _Task(next(self._tickets), absolute_roots(spec), detail)
        self._send(task)
        return task.ticket

    def _send(self, task: _Task, node: str | None = None) -> None:
        options = dict(self._options)
        if node:  # there, unless it died meanwhile
            # optional dependency (fedleak[ray]), imported where used
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        ref = self._task.options(**options).remote(task.spec, task.detail, max(1, int(self.cpus_per_run)), self._token,
                            os.environ.get("FEDLEAK_DATA"))
        self._pending[ref] = task

    def _elsewhere(self, task: _Task) -> str | None:
        """A node to try ``task`` on that it has not failed on and that fits one run (one where runs
        succeeded first), or ``None``."""
        tried = {node for node, _ in task.tried}
        try:
            nodes = _alive_nodes()
        except Exception:  # noqa: BLE001 - the cluster's view is gone: no retry
            return None
        fits = [n["NodeID"] for n in nodes if n.get("NodeID") not in tried
                and n.get("Resources", {}).get("CPU", 0.0) + 1e-9 >= self.cpus_per_run
                and n.get("Resources", {}).get("GPU", 0.0) + 1e-9 >= self.gpus_per_run]
        fits.sort(key=lambda n: n not in self._good)
        return fits[0] if fits else None

    def collect(self, timeout: float | None = None) -> list[tuple[Hashable, Outcome]]:
        """Finished runs; a run that failed for its node's reason is sent to another node instead
        (it comes back when it succeeds there or no node is left). Without ``timeout``, returns early
        with none when the cluster grew: there is room for more runs."""
        if not self._pending:
            return []
        ray = _ray()
        deadline = None if timeout is None else time.monotonic() + timeout
        room = self.capacity
        while True:
            left = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            refs = list(self._pending)
            ready, _ = ray.wait(refs, num_returns=1, timeout=left)
            if ready:  # and whatever else has finished meanwhile
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            done: list[tuple[Hashable, Outcome]] = []
            for ref in ready:
                task = self._pending.pop(ref)
                outcome = self._outcome(ray, ref, task)
                if outcome is not None:
                    done.append((task.ticket, outcome))
            if done or not self._pending:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                return []
            if deadline is None and self.capacity > room:
                return []

    def _outcome(self, ray: Any, ref: Any, task: _Task) -> Outcome | None:
        """The outcome of a finished task, or ``None`` when it was sent to another node."""
        try:
            outcome, node, local = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker or node died, the task was cancelled
            return Outcome(task.spec.key, error=f"ray: {describe_error(exc)}", host="")
        if outcome.ok:
            self._good.add(node)
            return outcome
        if local and node:
            task.tried.append((node, outcome.host))
            if node not in self._told:
                self._told.add(node)
                self.say(f"Ray node {outcome.host} ({node[:8]}) cannot read a run's data ({outcome.error}): "
                         "its runs that fail so are tried on other nodes")
            other = self._elsewhere(task)
            if other is not None:
                self._send(task, other)
                return None
            if len(task.tried) > 1:
                hosts = ", ".join(h for _, h in task.tried)
                outcome.error = f"{outcome.error} (on each of the {len(task.tried)} nodes that fit the run: {hosts})"
        return outcome

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            for ref in list(self._pending):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort: the task may have just finished
                    pass
        self._pending.clear()
        self._started = False
        if self._owned:
            ray.shutdown()
            self._owned = False

    def describe(self) -> str:
        if self._task is None:
            return "ray (not started: nothing to run)"
        cpus, gpus = self._resources.get("CPU", 0.0), self._resources.get("GPU", 0.0)
        return (f"ray ({self._where}: {cpus:g} CPUs, {gpus:g} GPUs; {self.capacity} runs at a time, "
                f"{self.cpus_per_run} CPU{'s' if self.cpus_per_run > 1 else ''}"
                + (f" and {self.gpus_per_run:g} GPU" if self.gpus_per_run else "") + " each)")


def _started_here(ray: Any) -> bool:
    """Whether this process started the Ray it is connected to (``ray.init()`` without an address):
    no node joins such a Ray."""
    try:
        node = ray._private.worker._global_node
    except AttributeError:  # Ray Client, or Ray's internals changed
        return False
    return bool(node is not None and getattr(node, "head", False))


@BACKENDS.register("ray")
def ray_backend(options: BackendOptions, given: set[str]) -> Backend:
    """``--backend ray``: the runs as Ray tasks (registered when this module is imported, which
    :func:`fedleak.studies.backends.make_backend` tries for the backends of optional extras)."""
    if options.batch > 1:
        raise ConfigError("--batch applies to --backend local (each Ray task runs one run)")
    return RayBackend(address=options.address, cpus_per_run=options.cpus_per_run,
                      gpus_per_run=options.gpus_per_run, workers=options.workers)
