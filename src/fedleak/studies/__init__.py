"""The seeds' experiments as named studies: a grid of runs plus an aggregation, table, plots and grids."""

# Fill the registry (flower_audit: a live federation's grid; secure_aggregation: a malicious server against
# secure aggregation).
from fedleak.studies import (  # noqa: F401
    flower_audit,
    grid_sweep,
    ig_hyperparameters,
    obfuscation,
    recognition,
    secure_aggregation,
    text,
    tradeoff,
    worst_case,
)
from fedleak.studies.base import STUDIES, PlannedRun, Study, StudySettings, study_of
from fedleak.studies.planning import build_study
from fedleak.studies.reading import load_study
from fedleak.studies.runner import run_study

__all__ = ["STUDIES", "PlannedRun", "Study", "StudySettings", "build_study", "load_study", "run_study", "study_of"]
