"""What a run, a study or a sweep *is*: where its data lies or where it computes is not part of it.

One rule, used wherever fedleak decides whether two things are the same: a run's key
(:meth:`fedleak.run_unit.RunSpec.identity`, hashed by :func:`fedleak.store.run_key`), whether a study
folder holds the grid being run (its ``study.json``, :func:`fedleak.studies.folder.prepare`), the
default folder of a sweep (``fedleak sweep``, :meth:`fedleak.studies.grid_sweep.SweepStudy.folder_name`) and each
run's private client seed (derived from its key, :mod:`fedleak.studies.secret`). The fields that say
*where* — a data root, a device — are *locations*: a study declares its own
(:attr:`fedleak.studies.base.Study.locations`), a run config's are :data:`RUN_LOCATIONS`. Moving the
data or the computation therefore never makes a study redo its runs or start another folder. Nor
does a config field added later, left at its default (:data:`LATER_FIELDS`): a run key names what a
run is in the terms of the folder that holds it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

ERASED = object()  # a location removed from the tree (the default), rather than set to a value

RUN_LOCATIONS: Mapping[str, Any] = {"data.root": None, "device": ERASED, "threat": ERASED}
"""A run config's locations. Run keys have always hashed ``data.root`` as null (the key stays
where the config holds a data section) and left ``device`` out. ``threat`` is left out too: the
threat model a run is granted decides whether it may run, never what it computes."""


LATER_FIELDS: Mapping[str, Any] = {"model.mean": None, "model.std": None, "metrics.semantic": None,
                                    "metrics.semantic_k": 3}
"""Run config fields added after run keys existed, with their defaults: a run that leaves one at its
default keeps the key it had before the field existed (:func:`without_defaults`)."""


def identity(tree: Mapping[str, Any], locations: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``tree`` without its ``locations`` (dotted paths): each is removed where its
    parent mapping exists — or, where ``locations`` maps it to a value other than :data:`ERASED`, set
    to that value (so that hashes made before a field became a location stay the same)."""
    spec = dict(locations) if isinstance(locations, Mapping) else dict.fromkeys(locations, ERASED)
    out = copy.deepcopy(dict(tree))
    for dotted, value in spec.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value is ERASED:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def without_defaults(tree: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``tree`` without the dotted fields of ``defaults`` that hold their default value
    (or are missing)."""
    out = copy.deepcopy(dict(tree))
    for dotted, default in defaults.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf, default) == default:
            node.pop(leaf, None)
    return out
