"""Run folders and output files: checked up front, written atomically (a temporary sibling renamed
into place), so a bad or full output location is one error before any work and never a half-written
result."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fedleak.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer assumed
    fcntl = None  # type: ignore[assignment]  # no module on Windows: None marks it missing


def default_out() -> Path:
    """``runs/<timestamp>``, or ``runs/<timestamp>-N`` when a run of the same second has it already."""
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_writable_parent(path: Path) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable folder."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot create {str(path)!r}: folder {str(parent)!r} is not writable")


def check_out(out: Path, force: bool = False) -> Path:
    """Refuse to overwrite a non-empty folder unless ``force``, or to write where nothing can be
    created; checked before any work is done."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"output folder {str(out)!r} is not empty; choose another --out or pass --force")
    check_writable_parent(out)
    return out


def check_file_out(path: Path, force: bool, what: str, suffix: str) -> Path:
    """An output file's path, checked before any work: its suffix, no existing file (unless
    ``force``), never a folder, and a place where it can be created."""
    if path.suffix != suffix:
        raise ConfigError(f"{what} path {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise ConfigError(f"{what} path {str(path)!r} is a folder")
    if path.exists() and not force:
        raise ConfigError(f"{what} {str(path)!r} exists; choose another --out or pass --force")
    check_writable_parent(path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: str | Path, folder: bool) -> None:
    """Give a temporary file or folder (``mkstemp``/``mkdtemp`` make them private, 0600/0700) the
    mode an ordinary ``open``/``mkdir`` would, before it is renamed into place."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _named(exc: OSError, target: Path) -> OSError:
    """The same error, naming the path the user gave rather than a temporary sibling."""
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


def write_atomically(out: Path, fill: Callable[[Path], None], replace: bool = True) -> Path:
    """Call ``fill(tmp)`` on a fresh temporary folder next to ``out``, then move it into place.
    If ``fill`` fails, nothing is left behind and an existing ``out`` is untouched. With
    ``replace=False`` an ``out`` that exists by then (another process was quicker) is a
    ``FileExistsError`` and stays as it is."""
    out = Path(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        _usual_mode(tmp, folder=True)
    except OSError as exc:
        _remove_empty(created)
        raise _named(exc, out) from None
    try:
        fill(tmp)
        if not replace:
            _rename_new(tmp, out)
        elif out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise _named(exc, out) from None
        raise
    return out


def _rename_new(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out`` in one step unless ``out`` holds something by then (an empty
    folder is replaced, as ``rename`` does)."""
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out)) from None
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this call created (deepest first) where they stayed empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a temporary sibling renamed into place); the
    folder must exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _usual_mode(tmp, folder=False)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise


def write_private_once(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, readable and writable by its owner only (mode 0600), in one
    step: a filled temporary sibling is hard-linked into place, so nobody ever reads it half-written
    and of several processes racing to create it exactly one wins. ``False`` when ``path`` exists
    already (it is left as it is)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # made 0600
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:  # a file system without hard links: create it exclusively instead
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise _named(exc, path) from None
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(out, "w") as f:
                f.write(text)
        return True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``folder`` itself for the block, so two
    processes never replace the same files at once; no lock file is made. A folder that does not
    exist has nothing to guard."""
    if fcntl is None or not Path(folder).is_dir():  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
