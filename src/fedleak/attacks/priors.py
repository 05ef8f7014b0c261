"""ROG's learned priors by kind, read from one safetensors file each (``fedleak train-prior``):

- ``restoration`` (:mod:`fedleak.attacks.restoration_prior`): denoising + super-resolution of the
  coarse image — the paper's default;
- ``semantic`` (:mod:`fedleak.attacks.semantic_prior`): a class-conditional generator that turns it
  into a natural image of the recovered class — the paper's semantic-level variant.

The file's ``fedleak_prior`` metadata names the kind (absent: restoration, as every prior written
before the semantic kind existed); nothing in it names code to import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fedleak.attacks.restoration_prior import RestorationPrior, prior_metadata, restoration_from
from fedleak.attacks.semantic_prior import SemanticPrior, semantic_from
from fedleak.errors import FedleakError
from fedleak.registry import Registry
from fedleak.validate import ECHO

Prior = RestorationPrior | SemanticPrior

PRIOR_KINDS: Registry[Callable[[str | os.PathLike[str], dict[str, Any]], Any]] = Registry("prior kind")
PRIOR_KINDS.register("restoration")(restoration_from)
PRIOR_KINDS.register("semantic")(semantic_from)


def load_any_prior(path: str | os.PathLike[str]) -> Prior:
    """The prior in ``path``, of the kind its metadata names; one clear error for anything else."""
    data = prior_metadata(path)
    kind = data.get("kind", "restoration")
    if not isinstance(kind, str) or kind not in PRIOR_KINDS:
        raise FedleakError(f"prior {path} is of an unknown kind {str(kind)[:ECHO]!r} (known: {', '.join(PRIOR_KINDS)})")
    prior: Prior = PRIOR_KINDS.get(kind)(path, data)
    return prior
