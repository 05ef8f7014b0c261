"""What is checked before a study touches its folder, so that a bad setting is one clear error and
no half-made study: that its runs import only the code its command line named
(:func:`check_factories`), that the devices they ask for exist where they compute
(:func:`check_devices`), and that every run's data, model, checkpoint and attack can be had
(:func:`preflight`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from fedleak.attacks import build_attack
from fedleak.config import RunConfig
from fedleak.device import resolve_device
from fedleak.models.checkpoint import read_info
from fedleak.models.external import is_external, refuse_file_factory
from fedleak.models.registry import MODELS
from fedleak.run_unit import RUN_KINDS
from fedleak.studies.backends import Backend
from fedleak.studies.base import Study
from fedleak.studies.planning import Planned


def check_factories(study: Study, planned: list[Planned]) -> None:
    """Refuse to run a study whose runs would import a ``package.module:factory`` that its
    command line did not name (:attr:`Study.factories`): one a settings file, a preset or a study
    folder names. Checked before anything is looked up or made."""
    if study.factories is None:
        return
    for p in planned:
        name = p.config.model.name
        if is_external(name) and name not in study.factories:
            where = f"the {study.name} study's config (a --config file or preset)"
            refuse_file_factory(name, where, study.factory_hint)


def check_devices(planned: list[Planned], backend: Backend) -> None:
    """Every device the runs ask for must exist where they compute — a one-line error before any
    folder is made, not a failed run each: a backend with a ``check_device`` (Ray: what its tasks
    see) checks there; the others compute in this process, so the device is resolved here."""
    check = getattr(backend, "check_device", resolve_device)
    for device in sorted({p.config.device for p in planned}):
        check(device)


def preflight(planned: list[Planned], loader: Callable) -> None:
    """Check what a run would only find out late — datasets, models, checkpoints, attacks — before
    any work starts, so a bad setting is one clear error and no half-made study folder."""
    seen: set[str] = set()
    for p in planned:
        c = p.config
        RUN_KINDS.get(p.run.kind)
        checks: dict[str, Callable[[], object]] = {
            f"data:{c.data.model_dump_json()}:{split}": functools.partial(
                _load_and_check, loader, c, split, c.data.index if split == c.data.split else None)
            for split in (c.data.split, *p.run.extra.get("splits", ()))
        }
        checks |= {
            f"model:{c.model.name}:{c.model.checkpoint}": lambda: read_info(c.model.checkpoint, named=c.model.name)  # noqa: B023  (each check runs in its own iteration)
            if c.model.checkpoint else (None if is_external(c.model.name) else MODELS.get(c.model.name)),  # noqa: B023
            **{f"classifier:{path}": functools.partial(read_info, path) for path in p.run.extra.get("transfer", ())},
            f"attack:{c.attack.model_dump_json()}": lambda: build_attack(c.attack.name, c.attack.settings()),  # noqa: B023
        }
        for key, check in checks.items():
            if key not in seen:
                seen.add(key)
                check()


def _load_and_check(loader: Callable, c: RunConfig, split: str, index: list[int] | None) -> None:
    """Load a run's split as its run would, and check that the images it names are in it."""
    dataset = loader(c.data.name, c.data.root, split=split, image_size=c.data.image_size,
                     channels=c.data.channels, **c.data.options)
    for i in index or ():
        dataset.check_index(i)
