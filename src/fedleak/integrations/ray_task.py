"""What travels to a Ray task and what runs there: :func:`absolute_roots` makes the spec's data roots
absolute on the driver (a worker's working folder is not the driver's; the key does not change), and
:func:`run_task` — the body of every task — executes it with its study (:func:`fedleak.run_unit.execute`),
its error captured, telling the backend (:mod:`fedleak.integrations.ray`) whether it failed for a
reason of its node.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import socket
import time
from typing import Any

import torch

from fedleak.data import load_dataset
from fedleak.errors import FedleakError
from fedleak.run_unit import Outcome, RunSpec, describe_error, execute
from fedleak.studies.base import STUDIES, study_of


@functools.lru_cache(maxsize=4)
def _cached_load(*args: Any, **kwargs: Any) -> Any:
    """Each worker process keeps the datasets it loaded, so its next run on them starts at once."""
    return load_dataset(*args, **kwargs)


_session: list[str] = [""]  # the study invocation whose datasets this worker's cache holds


def run_task(spec: RunSpec, detail: bool, threads: int, session: str,
             driver_data: str | None = None) -> tuple[Outcome, str, bool]:
    """The body of one Ray task: the run with ``threads`` torch threads, its error captured. A new
    ``session`` (another study invocation) empties the worker's dataset cache: the files may have
    changed in between. Returns the outcome, this node's id, and whether the run failed for a reason
    of this node: its data could not be loaded here (the driver loaded it before the study started) or
    a file could not be read here (an ``OSError``). ``driver_data`` is the driver's ``$FEDLEAK_DATA``,
    named in the error of a run that had no data root here because this node lacks it."""
    if _session[0] != session:
        _cached_load.cache_clear()
        _session[0] = session
    torch.set_num_threads(threads)
    loading: list[BaseException] = []

    def load(*args: Any, **kwargs: Any) -> Any:
        try:
            return _cached_load(*args, **kwargs)
        except Exception as exc:
            loading.append(exc)
            raise

    start = time.perf_counter()
    try:
        outcome = execute(spec, loader=load, detail=detail, study=study_of(spec))
    except Exception as exc:  # noqa: BLE001 - any failure of one run is that run's result
        error = describe_error(exc)
        data = spec.config.get("data")
        if (loading and driver_data and isinstance(data, dict) and data.get("root") is None
                and not os.environ.get("FEDLEAK_DATA")):
            error += (f" (this Ray worker on {socket.gethostname()} has no $FEDLEAK_DATA; the driver's is "
                      f"{driver_data!r}: set it on every node, or give the data root, e.g. --root)")
        outcome = Outcome(spec.key, seconds=round(time.perf_counter() - start, 3), error=error)
        return outcome, _node_id(), bool(loading) or isinstance(exc, OSError)
    return outcome, _node_id(), False


def _node_id() -> str:
    try:
        import ray  # optional dependency (fedleak[ray]): present in a Ray worker

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - not in a Ray worker (a test calling the body directly)
        return ""


def _absolute(root: Any) -> Any:
    return os.path.abspath(os.path.expanduser(root)) if isinstance(root, str) and root else root


def absolute_roots(spec: RunSpec) -> RunSpec:
    """``spec`` as it is shipped to a node: a relative data root (of its config and of its study's
    settings, :attr:`~fedleak.studies.base.Study.locations`) made absolute here, on the driver, where
    the study checked it. Its key does not change: the data root is no part of a run's identity."""
    config = copy.deepcopy(spec.config)
    if isinstance(config.get("data"), dict):
        config["data"]["root"] = _absolute(config["data"].get("root"))
    settings = copy.deepcopy(spec.settings)
    locations: tuple[str, ...] = ("root",)
    if spec.study:
        try:
            locations = STUDIES.get(spec.study).locations
        except FedleakError:
            pass
    for dotted in locations:
        *parents, leaf = dotted.split(".")
        if leaf != "root":
            continue
        node: Any = settings
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _absolute(node[leaf])
    return dataclasses.replace(spec, config=config, settings=settings)
