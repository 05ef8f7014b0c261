"""What the results database holds, as Python values: a run's key, a finished run's
:class:`RunRecord` and a failed run's :class:`Failure`, and the checks a row read back passes before it
becomes one.

Rows are read back as files other people made: each column, and the metrics the reports and tables
read, must have the type fedleak writes (strictly: a number is never a string that looks like one),
else one error names the run's key and the field (``metrics.images[0].psnr``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from fedleak.errors import FedleakError
from fedleak.validate import short

FAILURE_COLUMNS = ("key", "study", "name", "params", "config", "error", "attempts", "failed", "host")
RUN_COLUMNS = ("key", "study", "name", "params", "config", "seed", "metrics", "artifacts", "seconds", "finished")


def run_key(study: str, config: dict[str, Any]) -> str:
    """A stable id of a run: the study and its fully specified config, hashed (the caller leaves out
    what only says where things lie, such as ``data.root``: see :meth:`fedleak.run_unit.RunSpec.key`)."""
    text = json.dumps({"study": study, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Run:
    """What a finished and a failed run both hold: the run's coordinates (key, study, name and the
    study's parameters) and its config."""

    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]


@dataclass
class RunRecord(_Run):
    """A finished run: its seed, metrics, artifact paths, how long it took and when it finished."""

    seed: int
    metrics: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    finished: float = 0.0


@dataclass
class Failure(_Run):
    """A run that raised: its coordinates, config and one-line error, how often it was tried, and
    the host it last failed on."""

    error: str
    attempts: int = 1
    failed: float = 0.0
    host: str = ""  # where it last failed (a Ray node's host; "" when unknown)



class _Stored(BaseModel):
    """What fedleak writes, checked strictly on the way back (a number is a number, never a string
    that looks like one); keys fedleak does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Guess(_Stored):
    psnr: float
    ssim: float
    index: int | None = None


class _TextGuess(_Stored):
    rouge1: float
    rouge2: float
    rougeL: float
    token_accuracy: float
    index: int | None = None


class _Baselines(_Stored):
    """An image run's guesses (mean colour, another image) or a text run's (another sentence)."""

    mean_colour: _Guess | None = None
    other_image: _Guess | None = None
    other_text: _TextGuess | None = None


class _ImageScore(_Stored):
    psnr: float
    ssim: float
    position: int | None = None
    dataset_index: int | None = None
    matched: int | None = None
    label: int | None = None
    recovered_label: int | None = None
    lpips: dict[str, float | None] = {}


class _Classification(_Stored):
    original_correct: bool
    original_confidence: float
    recon_correct: list[bool]
    recon_predicted: list[int] = []
    recon_predicted_name: list[str] = []
    recon_confidence: list[float] = []
    recon_true_confidence: list[float] = []


class _Metrics(_Stored):
    """The metrics the report and the studies' tables read; every field optional (a training run
    has no PSNR), typed where present."""

    psnr: float | None = None
    ssim: float | None = None
    lpips: dict[str, float | None] | None = None
    label_accuracy: float | None = None
    matching_loss: float | None = None
    restart_losses: list[float | None] | None = None
    iterations: int | None = None
    attack_seconds: float | None = None
    seconds: float | None = None
    seed: int | None = None
    images: list[_ImageScore] = []
    hints: list[str] = []
    baselines: _Baselines | None = None
    classification: _Classification | None = None
    exact_images: int | None = None
    observed_images: int | None = None
    test_accuracy: float | None = None
    accuracy_per_round: list[float] | None = None
    ran_on: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None


EXTRA_METRICS: dict[str, TypeAdapter] = {  # metrics named by a prefix, and what each holds
    "lpips_": TypeAdapter(float | None),  # a backbone's score beside ``lpips``
    "transfer:": TypeAdapter(_Classification),  # another classifier's verdict (the transfer study)
}


class _Columns(_Stored):
    """The columns a ``runs`` row and a ``failures`` row share: the run's coordinates and config."""

    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]


class _Row(_Columns):
    """A ``runs`` row, its JSON columns decoded."""

    model_config = ConfigDict(extra="forbid", strict=True)
    seed: int
    metrics: _Metrics
    artifacts: dict[str, str]
    seconds: float
    finished: float


class _FailureRow(_Columns):
    """A ``failures`` row, its JSON columns decoded."""

    model_config = ConfigDict(extra="ignore", strict=True)  # columns added later (a host, say) are read elsewhere
    error: str
    attempts: int
    failed: float


JSON_COLUMNS = ("params", "config", "metrics", "artifacts")


def _where(loc: tuple) -> str:
    """A pydantic error location as a dotted field name: ``metrics.images[0].psnr``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "model-")):  # a validator's own step, not a field
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


EXPECTS = {"float_type": "a number", "int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
           "dict_type": "a JSON object", "list_type": "a JSON list", "model_type": "a JSON object",
           "missing": "present", "extra_forbidden": "absent"}


def _decoded(row: Any, columns: tuple[str, ...], what: str, path: Path) -> dict[str, Any]:
    """A row as a column → value mapping, its JSON columns decoded; a column that is no JSON is
    one error naming the row and the column."""
    values = dict(zip(columns, row))
    key = values.get("key")
    for column in JSON_COLUMNS:
        if column not in values:
            continue
        try:
            values[column] = json.loads(values[column])
        except (json.JSONDecodeError, TypeError, RecursionError) as exc:
            detail = (f"({str(exc)[:60]})" if isinstance(exc, json.JSONDecodeError) else "(it nests too deeply)"
                      if isinstance(exc, RecursionError) else f"(a {type(values[column]).__name__})")
            raise FedleakError(f"results database {path}: {what} {str(key)[:40]!r} is corrupt: "
                               f"{column} is not valid JSON {detail}") from None
    return values


def _invalid(exc: ValidationError, key: Any, what: str, path: Path, within: tuple = ()) -> FedleakError:
    """The first problem of a row as one line naming the run's key and the field."""
    err = exc.errors()[0]
    expect = EXPECTS.get(err["type"], err["msg"].removeprefix("Input should be ").removeprefix("Value error, "))
    got = "" if err["type"] == "missing" else f", got {short(err.get('input'))}"
    where = _where((*within, *err["loc"]))
    return FedleakError(f"results database {path}: {what} {str(key)[:40]!r} is corrupt: "
                        f"{where or 'the row'} must be {expect}{got}")


def read_record(row: tuple, path: Path) -> RunRecord:
    """A row as a :class:`RunRecord`; a row that is not what fedleak wrote is one clear error naming
    the run and the field."""
    values = _decoded(row, RUN_COLUMNS, "run", path)
    try:
        _Row.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc, values.get("key"), "run", path) from None
    for name, value in values["metrics"].items():
        adapter = next((a for prefix, a in EXTRA_METRICS.items() if name.startswith(prefix)), None)
        try:
            if adapter is not None:
                adapter.validate_python(value, strict=True)
        except ValidationError as exc:  # located under its own name
            raise _invalid(exc, values.get("key"), "run", path, ("metrics", name)) from None
    return RunRecord(key=values["key"], study=values["study"], name=values["name"], params=values["params"],
                     config=values["config"], seed=values["seed"], metrics=values["metrics"],
                     artifacts=values["artifacts"], seconds=float(values["seconds"]),
                     finished=float(values["finished"]))


def read_failure(row: sqlite3.Row | tuple, path: Path, columns: tuple[str, ...] | None = None) -> Failure:
    """A ``failures`` row as a :class:`Failure`; a damaged row is one clear error naming the run
    and the field."""
    columns = columns or ("key", "study", "name", "params", "config", "error", "attempts", "failed")
    values = _decoded(row, columns, "failed run", path)
    try:
        _FailureRow.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc, values.get("key"), "failed run", path) from None
    return Failure(key=values["key"], study=values["study"], name=values["name"], params=values["params"],
                   config=values["config"], error=values["error"], attempts=values["attempts"],
                   failed=float(values["failed"]), host=_host(values.get("host")))


def _host(value: Any) -> str:
    """A failure's host column: a database made before it existed (or a damaged value) has none."""
    return value if isinstance(value, str) else ""
