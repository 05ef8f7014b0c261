"""The seeds' experiments as named studies: a grid of runs plus an aggregation, table, plots and grids."""

from fedleak.studies import obfuscation, recognition, sweeps, tradeoff  # noqa: F401  (fill the registry)
from fedleak.studies.base import STUDIES, PlannedRun, Study, StudySettings
from fedleak.studies.runner import build_study, load_study, run_study

__all__ = ["STUDIES", "PlannedRun", "Study", "StudySettings", "build_study", "load_study", "run_study"]
