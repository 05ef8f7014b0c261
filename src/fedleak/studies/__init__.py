"""The seeds' experiments as named studies: a grid of runs plus an aggregation, table, plots and grids."""

from fedleak.studies import obfuscation, recognition, sweep, sweeps, tradeoff  # noqa: F401  (fill the registry)
from fedleak import audit  # noqa: F401  (the flower-audit study: a live federation's grid)
from fedleak.studies import secure_aggregation  # noqa: F401  (a malicious server against secure aggregation)
from fedleak.studies.base import STUDIES, PlannedRun, Study, StudySettings
from fedleak.studies.runner import build_study, load_study, run_study

__all__ = ["STUDIES", "PlannedRun", "Study", "StudySettings", "build_study", "load_study", "run_study"]
