"""How the command line ends, decided in one place.

- A problem with the user's input or environment — a :class:`~fedleak.errors.FedleakError`, an
  ``OSError`` (a missing file, a read-only or full disk), or a known library's complaint about a file
  (Pillow, safetensors, JSON, pydantic, YAML, SQLite, text decoding) — is one line
  ``fedleak: error: …`` and exit code 2.
- Ctrl-C is ``fedleak: interrupted`` and exit code 130.
- Anything else is a bug in fedleak: one line ``fedleak: internal error: …`` asking for a report, exit
  code 1; the traceback only with ``fedleak --debug``.

Every message is cut to one line of at most :data:`MAX_MESSAGE` characters, so a hostile file cannot
flood the terminal through an error that echoes it.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
import traceback
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import ValidationError

from fedleak.config_yaml import describe_validation_error
from fedleak.errors import FedleakError

USER_ERROR = 2
INTERNAL_ERROR = 1
INTERRUPTED = 130
MAX_MESSAGE = 400
REPORT_AT = "the project's issue tracker"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` with its whitespace (newlines too) collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _os_error(exc: OSError) -> str:
    """The system's reason and the path(s) involved: "No space left on device: '/mnt/run'"."""
    if exc.strerror is None:
        return str(exc)
    reason = exc.strerror
    if exc.errno == errno.EROFS:
        reason = "read-only file system"
    paths = [repr(str(p)) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' → '.join(paths)}" if paths else reason


def _validation(exc: ValidationError) -> str:
    return describe_validation_error(exc)


def _library_errors() -> list[tuple[type[BaseException], Callable[[Any], str]]]:
    """(exception type, message) for the libraries that report bad files; Pillow and safetensors
    are looked up only when an error needs classifying (they are slow to import)."""
    table: list[tuple[type[BaseException], Callable[[Any], str]]] = [  # each message takes its own type
        (FedleakError, str),
        (ValidationError, _validation),
        (json.JSONDecodeError, lambda e: f"invalid JSON: {e}"),
        (UnicodeDecodeError, lambda e: f"a file is not UTF-8 text: {e}"),
        (yaml.YAMLError, lambda e: f"invalid YAML: {e}"),
        (sqlite3.DatabaseError, lambda e: f"database error: {e}"),
    ]
    try:
        from PIL import Image, UnidentifiedImageError

        table += [(Image.DecompressionBombError, lambda e: f"image refused: {e}"),
                  (UnidentifiedImageError, str)]
    except ImportError:  # pragma: no cover
        pass
    try:
        from safetensors import SafetensorError

        table.append((SafetensorError, lambda e: f"not a readable safetensors file: {e}"))
    except ImportError:  # pragma: no cover
        pass
    return table + [(OSError, _os_error)]  # last: Pillow's UnidentifiedImageError is an OSError too


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or ``None`` when ``exc`` is a bug."""
    for kind, describe in _library_errors():
        if isinstance(exc, kind):
            return one_line(describe(exc))
    return None


def report(exc: BaseException, debug: bool = False) -> int:
    """Print what ``exc`` means for the user on stderr; return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        print("fedleak: interrupted", file=sys.stderr)
        return INTERRUPTED
    message = user_message(exc)
    if message is not None:
        print(f"fedleak: error: {message}", file=sys.stderr)
        if debug:
            traceback.print_exception(exc)
        return USER_ERROR
    if debug:
        traceback.print_exception(exc)
    detail = one_line(f"{type(exc).__name__}: {exc}", MAX_MESSAGE - 100)
    hint = "" if debug else " (rerun with --debug for the traceback)"
    print(f"fedleak: internal error: {detail} — please report it at {REPORT_AT}{hint}", file=sys.stderr)
    return INTERNAL_ERROR
