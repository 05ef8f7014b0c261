"""Where a study's runs execute: ``local`` (in this process, one after another) or ``ray`` (tasks on
a local or remote Ray cluster, several at once). A backend only executes :class:`~fedleak.run_unit.RunSpec`
s and hands back :class:`~fedleak.run_unit.Outcome` s; claiming runs, committing results and the
progress bar stay with the driver (:mod:`fedleak.studies.runner`), whatever the backend.

A new backend is one class with :meth:`Backend.submit` and :meth:`Backend.collect` and one
``@BACKENDS.register`` factory, in its own module (``ray``: :mod:`fedleak.integrations.ray`, an
optional extra tried when backends are looked up, :data:`EXTRAS`).
"""

from __future__ import annotations

import functools
import importlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedleak.config import describe_validation_error
from fedleak.errors import ConfigError
from fedleak.registry import Registry
from fedleak.run_unit import Outcome, RunSpec, attempt, attempt_many
from fedleak.studies.base import study_of


class BackendOptions(BaseModel):
    """How runs are placed: which cluster, what each run reserves, how many at once."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    address: str | None = Field(None, description="cluster to join (ray: 'auto', 'HOST:6379' or 'ray://HOST:10001')")
    cpus_per_run: int = Field(1, ge=1, description="CPU cores each run reserves (and uses as torch threads)")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs each run reserves (0.5: two runs share one GPU)")
    workers: int | None = Field(None, ge=1, description="at most this many runs at once (default: what the resources hold)")
    batch: int = Field(1, ge=1, description="local: attack up to this many runs together in one batched optimisation "
                       "(runs sharing model and attack settings; fills a GPU)")


class Backend(ABC):
    """Executes run specs; ``capacity`` is how many may be in flight at once (the driver reads it
    again before each submission: it may change while a study runs). ``note`` receives the lines a
    backend has for the user (which cluster it joined, that it waits for nodes); unset, they go to
    the ``fedleak`` logger. ``quiet`` keeps all but warnings back."""

    name: ClassVar[str] = "backend"
    capacity: int = 1
    note: Callable[[str], None] | None = None
    quiet: bool = False

    def say(self, text: str, warn: bool = False) -> None:
        """Tell the user ``text`` (through :attr:`note`, else the ``fedleak`` logger; ``warn``: at
        warning level, which Python shows even where logging is not set up, and even when ``quiet``)."""
        if self.quiet and not warn:
            return
        if self.note is not None:
            self.note(text)
        else:
            logging.getLogger("fedleak").log(logging.WARNING if warn else logging.INFO, text)

    def start(self, loader: Callable) -> None:  # noqa: B027  (an optional hook: empty by default)
        """Get ready (connect, start workers); ``loader`` is the driver's cached dataset loader."""

    @abstractmethod
    def submit(self, spec: RunSpec, detail: bool = False) -> Hashable:
        """Hand one run over; returns a ticket that :meth:`collect` gives back with its outcome."""

    @abstractmethod
    def collect(self, timeout: float | None = None) -> list[tuple[Hashable, Outcome]]:
        """The submitted runs that have finished: at least one, unless ``timeout`` seconds pass first
        or the backend's :attr:`capacity` grew (room for more runs: none is returned then)."""

    def close(self) -> None:  # noqa: B027  (an optional hook: empty by default)
        """Stop: runs still in flight are cancelled (their claims are released by the driver)."""

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBackend(Backend):
    """Each run in this process when collected, one at a time (a run's own progress bar works) — or,
    with ``batch`` N > 1, up to N runs together: attack runs that share model and attack settings go
    through one batched optimisation (:func:`~fedleak.run_unit.attempt_many`)."""

    name = "local"

    def __init__(self, batch: int = 1) -> None:
        self._queue: deque[tuple[int, RunSpec, bool]] = deque()
        self._loader: Callable | None = None
        self._count = 0
        self.capacity = batch

    def start(self, loader: Callable) -> None:
        self._loader = loader

    def submit(self, spec: RunSpec, detail: bool = False) -> Hashable:
        self._count += 1
        self._queue.append((self._count, spec, detail))
        return self._count

    def collect(self, timeout: float | None = None) -> list[tuple[Hashable, Outcome]]:
        if not self._queue:
            return []
        kwargs = {"loader": self._loader} if self._loader is not None else {}
        if self.capacity == 1:
            ticket, spec, detail = self._queue.popleft()
            return [(ticket, attempt(spec, detail=detail, study=study_of(spec), **kwargs))]
        queued = [self._queue.popleft() for _ in range(min(self.capacity, len(self._queue)))]
        specs = [spec for _, spec, _ in queued]
        outcomes = attempt_many(specs, detail=any(d for *_, d in queued), studies=[study_of(s) for s in specs], **kwargs)
        return [(ticket, outcome) for (ticket, _, _), outcome in zip(queued, outcomes)]

    def close(self) -> None:
        self._queue.clear()

    def describe(self) -> str:
        return "local" if self.capacity == 1 else f"local, {self.capacity} runs per batch"


BackendFactory = Callable[[BackendOptions, set[str]], Backend]
BACKENDS: Registry[BackendFactory] = Registry("backend")


@BACKENDS.register("local")
def _local(options: BackendOptions, given: set[str]) -> Backend:
    if given - {"workers", "batch"} or (options.workers or 1) > 1:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(given - {"batch"}))
        raise ConfigError(f"the local backend runs one run at a time in this process: {names} apply only to --backend ray")
    return LocalBackend(options.batch)


# The backends of optional extras, each registered by its own module when that is imported: tried
# when a backend is looked up, so a missing extra is one clear line (Ray itself is imported only
# when such a backend starts).
EXTRAS = {"ray": "fedleak.integrations.ray"}


def _extras() -> None:
    for name, module in EXTRAS.items():
        if name not in BACKENDS:
            try:
                importlib.import_module(module)  # registers the backend (it sits above this layer)
            except ImportError as exc:
                BACKENDS.register(name)(functools.partial(_missing, f"the {name} backend needs Ray ({exc}): "
                                                                    f"pip install 'fedleak[{name}]'"))


def _missing(why: str, options: BackendOptions, given: set[str]) -> Backend:
    raise ConfigError(why)


def make_backend(name: str = "local", **options: Any) -> Backend:
    """The backend ``name`` with ``options`` (those left ``None`` take their defaults), checked."""
    _extras()
    factory = BACKENDS.get(name)
    given = {k: v for k, v in options.items() if v is not None}
    try:
        checked = BackendOptions.model_validate(given)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="backend.")) from None
    return factory(checked, set(given))
