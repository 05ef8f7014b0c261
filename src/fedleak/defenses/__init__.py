"""Obfuscations φ a client applies to what it sends, composable from spec strings."""

from fedleak.defenses import aggregate, compression, dp, noise, soteria  # noqa: F401  (fill the registry)
from fedleak.defenses.base import (
    DEFENSES,
    Aggregation,
    Defense,
    DefenseConfig,
    Gradient,
    GradientDefense,
    Update,
    UpdateDefense,
)
from fedleak.defenses.dp import dp_epsilon
from fedleak.defenses.pipeline import DefensePipeline, batch_gradient, check_spec, parse_defense

__all__ = [
    "DEFENSES", "Aggregation", "Defense", "DefenseConfig", "DefensePipeline", "Gradient", "GradientDefense",
    "Update", "UpdateDefense", "batch_gradient", "check_spec", "dp_epsilon", "parse_defense",
]
