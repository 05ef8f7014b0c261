"""Where :class:`~fedleak.integrations.flower.LeakageAudit` attacks: off the round thread.

The round thread builds one :class:`AuditJob` per audited update — the payload the server observed,
the attacker's knowledge, the attack's settings, what scoring needs — and hands it to a worker;
the round goes on at once, and finished audits are collected at the next round (and waited for at
the end of the federation). A job travels as bytes (:func:`pickle.dumps` of the job, tensors
copied), so it reaches a spawned process or a Ray task whole, and nothing the round thread keeps
is shared with the attack.

Workers (:data:`WORKERS`, chosen by :func:`make_worker`):

- ``process`` (``workers=N``, N ≥ 1; the default is 1): a local pool of N processes started with
  ``spawn`` (safe with CUDA and with the threads Flower and Ray run), each at a lower CPU priority
  (``nice``) than the federation's own processes, so that local clients training on the same
  machine keep the CPU first. Each process imports the model's class by its module path, as
  :mod:`pickle` does: a model class defined inside a function cannot reach it.
- ``ray`` (``workers="ray"``): one Ray task per job on the Ray session this process has (a Flower
  simulation's, or a new local one), reserving ``resources`` (default one CPU; in a simulation whose
  client actors hold every CPU, ``{"num_cpus": 0}`` lets the audit run beside them). The task sees
  this process's ``sys.path``, so an app's modules import there as they do here.
- ``inline`` (``workers=0``): in this process, on the round thread, as the audit ran before there
  were workers (for debugging, and for hooks that cannot be pickled).
"""

from __future__ import annotations

import os
import pickle
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from typing import Any

import torch

from fedleak.attacks.base import AttackerKnowledge
from fedleak.audit import IMAGES, AuditAttack, AuditRecord, Scoring, audit_update
from fedleak.errors import ConfigError
from fedleak.fl.payload import ClientData, Payload
from fedleak.metrics.lpips import LPIPS, lpips_scorers
from fedleak.registry import Registry

EvaluationHook = Callable[[int, int, int], ClientData | None]
"""``(run_id, server_round, node_id) → the batch that node trained on, or None`` — simulations only."""

NICE = 10  # how much lower a process worker's CPU priority is than the federation's (os.nice)


@dataclass(frozen=True)
class HookTruth:
    """The batches ``hook`` gives for ``nodes`` of one round, concatenated (``None`` unless every
    node shared one): asked for only when called, which the audit does after its attack returned."""

    hook: EvaluationHook
    run_id: int
    server_round: int
    nodes: tuple[int, ...]
    device: str

    def __call__(self) -> ClientData | None:
        parts = [self.hook(self.run_id, self.server_round, node) for node in self.nodes]
        found = [p for p in parts if p is not None]
        if not parts or len(found) < len(parts):
            return None
        return ClientData(torch.cat([p.images.to(self.device) for p in found]),
                          torch.cat([p.labels.to(self.device) for p in found]),
                          sum((p.indices for p in found), ()) if all(p.indices for p in found) else ())


@lru_cache(maxsize=4)
def scorers(nets: tuple[str, ...], folder: str | None) -> tuple[dict[str, LPIPS | None], tuple[str, ...]]:
    """The LPIPS scorers of ``nets`` and the hints on missing weights, loaded once per process."""
    found, hints = lpips_scorers(list(nets), folder)
    return found, tuple(hints)


@dataclass(frozen=True)
class AuditJob:
    """One audited update as a worker gets it: everything :func:`~fedleak.audit.audit_update`
    needs, with the LPIPS backbones named (each worker loads its own)."""

    payload: Payload
    knowledge: AttackerKnowledge
    attack: AuditAttack
    round: int
    client: str
    view: str
    seed: int
    assumptions: tuple[str, ...]
    truth: HookTruth | None = None
    lpips: tuple[str, ...] = ()
    lpips_weights: str | None = None
    sources: tuple[tuple[str, str], ...] = ()  # each training setting → where the audit read it
    public: torch.Tensor | None = None  # images the server holds, in [0, 1]
    public_labels: torch.Tensor | None = None
    scoring: Scoring = IMAGES  # the inputs' modality (fedleak.audit.Scoring)

    def run(self) -> AuditRecord:
        lpips = scorers(self.lpips, self.lpips_weights)[0] if self.truth is not None else {}
        return audit_update(self.payload, self.knowledge, self.attack.build(), round=self.round, client=self.client,
                            seed=self.seed, assumptions=list(self.assumptions), view=self.view, truth=self.truth,
                            lpips=lpips, sources=dict(self.sources), public=self.public,
                            public_labels=self.public_labels, scoring=self.scoring)


def run_job(blob: bytes) -> bytes:
    """A worker's whole task: the pickled :class:`AuditJob` in, its pickled record out."""
    job = pickle.loads(blob)
    return pickle.dumps(job.run())


def _decoded(inner: Future[bytes]) -> Future[AuditRecord]:
    """A future of the record that ``inner``'s pickled bytes hold (its error, if it failed)."""
    outer: Future[AuditRecord] = Future()

    def done(f: Future[bytes]) -> None:
        try:
            outer.set_result(pickle.loads(f.result()))
        except BaseException as exc:  # the worker's error (or a dead worker) becomes the audit's
            outer.set_exception(exc)

    inner.add_done_callback(done)
    return outer


class Worker(ABC):
    """Runs audit jobs: :meth:`submit` returns at once with a future of the job's record."""

    name = "worker"
    pickles = True  # a job must survive pickle.dumps to reach it (inline: no)

    @abstractmethod
    def submit(self, job: AuditJob) -> Future[AuditRecord]: ...

    def start(self) -> None:
        """Get ready for jobs ahead of the first (a process worker spawns and imports now)."""
        return None

    @abstractmethod
    def close(self, wait: bool = True) -> None:
        """Release the worker's processes (``wait``: after the jobs still running)."""

    def describe(self) -> str:
        return self.name


WORKERS: Registry[Callable[..., Worker]] = Registry("audit worker")


@WORKERS.register("inline")
class InlineWorker(Worker):
    """Runs each job now, in this process, on the calling thread."""

    name = "inline"
    pickles = False

    def __init__(self, **_: Any) -> None:
        pass

    def submit(self, job: AuditJob) -> Future[AuditRecord]:
        future: Future[AuditRecord] = Future()
        try:
            future.set_result(job.run())
        except Exception as exc:  # the audit's error, kept for whoever collects it
            future.set_exception(exc)
        return future

    def close(self, wait: bool = True) -> None:
        return None  # nothing runs elsewhere


def _lower_priority(threads: int | None, nice: int = NICE) -> None:
    """A process worker's initializer: ``nice`` below the federation's CPU priority, ``threads`` torch threads."""
    try:
        os.nice(nice)
    except OSError:  # a platform without nice: the same priority
        pass
    if threads is not None:
        torch.set_num_threads(threads)


@WORKERS.register("process")
class ProcessWorker(Worker):
    """A pool of ``count`` spawned processes, started at the first job (or :meth:`start`), each
    ``nice`` steps below this process's CPU priority; a pool that broke (a process died) is replaced
    at the next job, the jobs it held failing."""

    name = "process"

    def __init__(self, count: int = 1, threads: int | None = None, nice: int = NICE, **_: Any) -> None:
        self.count, self.threads, self.nice = count, threads, nice
        self._pool: ProcessPoolExecutor | None = None
        self.ready: Future[int] | None = None  # the process id of the first worker, once it imported fedleak

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.count, mp_context=get_context("spawn"),
                                   initializer=_lower_priority, initargs=(self.threads, self.nice))

    def start(self) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
            self.ready = self._pool.submit(os.getpid)  # spawns a process; its initializer imports this module

    def submit(self, job: AuditJob) -> Future[AuditRecord]:
        blob = pickle.dumps(job)
        self.start()
        assert self._pool is not None
        try:
            return _decoded(self._pool.submit(run_job, blob))
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return _decoded(self._pool.submit(run_job, blob))

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None

    def describe(self) -> str:
        return f"{self.count} spawned process{'es' * (self.count > 1)}"


def _ray() -> Any:
    try:
        import ray  # optional dependency: fedleak[ray]
    except ImportError as exc:
        raise ConfigError(f"workers='ray' needs Ray ({exc}): pip install 'fedleak[ray]'") from None
    return ray


@WORKERS.register("ray")
class RayWorker(Worker):
    """One Ray task per job, reserving ``resources`` (Ray's ``num_cpus``, ``num_gpus``, …), on the
    session this process has or a local one started at the first job."""

    name = "ray"

    def __init__(self, resources: Mapping[str, float] | None = None, **_: Any) -> None:
        self.ray = _ray()
        self.resources = dict(resources if resources is not None else {"num_cpus": 1})
        self._task: Any = None

    def submit(self, job: AuditJob) -> Future[AuditRecord]:
        blob = pickle.dumps(job)
        if self._task is None:
            if not self.ray.is_initialized():
                self.ray.init(include_dashboard=False, log_to_driver=False)
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))  # the app's modules, as here
            self._task = self.ray.remote(run_job).options(runtime_env={"env_vars": {"PYTHONPATH": path}},
                                                          max_retries=0, **self.resources)
        return _decoded(self._task.remote(blob).future())

    def close(self, wait: bool = True) -> None:
        return None  # the Ray session is the user's (or Flower's): left running


def make_worker(workers: int | str | Worker, threads: int | None = None,
                resources: Mapping[str, float] | None = None) -> Worker:
    """The worker ``workers`` names: 0 (``inline``), a number of processes (``process``) or ``ray`` —
    or a :class:`Worker` made by the caller (shared by several audits, closed by the caller)."""
    if isinstance(workers, Worker):
        return workers
    if isinstance(workers, bool) or not isinstance(workers, (int, str)) or (
            isinstance(workers, str) and workers not in WORKERS):
        raise ConfigError(f"workers= must be a number of processes (0: audit in this process) or one of "
                          f"{', '.join(WORKERS.names())}, got {workers!r}")
    if isinstance(workers, int):
        if workers < 0:
            raise ConfigError("workers= must be at least 0 (0: audit in this process, on the round thread)")
        return WORKERS.get("inline" if workers == 0 else "process")(count=workers, threads=threads)
    return WORKERS.get(workers)(resources=resources, threads=threads)
