"""Download LPIPS's weight files, only when the user asks (``fedleak weights fetch alex|vgg``).

A run never touches the network: :mod:`fedleak.metrics.lpips` looks for local files and scores n/a
without them. This module fetches, per backbone, the two files that lookup wants — torchvision's
ImageNet backbone from download.pytorch.org and LPIPS's v0.1 linear layers from the authors'
repository (richzhang/PerceptualSimilarity, pinned to a commit) — into torch's hub cache, where the
lookup searches. The linear layers are downloaded rather than taken from ``pip install lpips``
because that package depends on torchvision, whose installation replaces a CPU build of torch.

Each file is checked against the full SHA-256 and the size of the official file (torchvision's file
names carry only the first 8 hex digits of that hash), streamed into a temporary file beside the
target and renamed into place only when whole and correct: a failed, corrupt, truncated or
interrupted download leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from fedleak.errors import FedleakError
from fedleak.metrics.lpips import hub_checkpoints

CHUNK = 1 << 20
LPIPS_RAW = ("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/"
             "082bb24f84c091ea94de2867d34c4544f68e0963/lpips/weights/v0.1")


@dataclass(frozen=True)
class WeightFile:
    """One official file: the name the LPIPS lookup finds it under, where it comes from, and what it is."""

    name: str
    url: str
    sha256: str
    size: int


SOURCES: dict[str, tuple[WeightFile, ...]] = {
    "alex": (
        WeightFile("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                   "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", 244_408_911),
        WeightFile("lpips_alex.pth", f"{LPIPS_RAW}/alex.pth",
                   "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", 6_009),
    ),
    "vgg": (
        WeightFile("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                   "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", 553_433_881),
        WeightFile("lpips_vgg.pth", f"{LPIPS_RAW}/vgg.pth",
                   "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", 7_289),
    ),
}


@dataclass(frozen=True)
class Fetched:
    path: Path
    downloaded: bool  # False: a correct copy was already there


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files(net: str, sources: Mapping[str, Sequence[WeightFile]] = SOURCES) -> Sequence[WeightFile]:
    """The official files of LPIPS backbone ``net``; one clear error for an unknown name."""
    if net not in sources:
        raise FedleakError(f"unknown LPIPS backbone {net!r}; choose one of: {', '.join(sources)}")
    return sources[net]


def fetch(net: str, folder: str | Path | None = None, sources: Mapping[str, Sequence[WeightFile]] = SOURCES,
          progress: bool = True, timeout: float = 60.0) -> list[Fetched]:
    """Download the files of LPIPS backbone ``net`` into ``folder`` (torch's hub cache by default).
    A file already there with the official hash is kept. ``sources`` replaces the table of official
    files (tests serve their own)."""
    items = files(net, sources)
    folder = Path(folder) if folder else hub_checkpoints()
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # what a failure must take away again
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedleakError(f"cannot create the weights folder {folder}: {exc.strerror}") from None
    done = []
    try:
        for item in items:
            target = folder / item.name
            if target.is_file() and sha256_of(target) == item.sha256:
                done.append(Fetched(target, False))
                continue
            download(item, target, progress, timeout)
            done.append(Fetched(target, True))
    except BaseException:
        for path in made:  # deepest first; only folders this call made and nothing has filled
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return done


def download(item: WeightFile, target: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """Stream ``item`` into a temporary sibling of ``target``; check it; rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            received, declared, digest = _stream(item, sink, progress, timeout)
        problem = _problem(item, received, declared, digest)
        if problem:
            raise FedleakError(f"download of {item.name} from {item.url} rejected: {problem}; nothing was kept")
        os.chmod(tmp, 0o644)  # a cache file as torch writes it (mkstemp makes it private)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _stream(item: WeightFile, sink, progress: bool, timeout: float) -> tuple[int, int | None, str]:
    """Copy the response body into ``sink``: (bytes received, Content-Length or None, SHA-256)."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(item.url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            with tqdm(total=declared or item.size, unit="B", unit_scale=True, desc=item.name,
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        plain = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
        reason = str(exc.reason if plain and isinstance(exc, urllib.error.URLError) else exc) or type(exc).__name__
        raise FedleakError(f"cannot download {item.name} from {item.url}: {reason}; nothing was kept") from None
    return received, declared, digest.hexdigest()


def _problem(item: WeightFile, received: int, declared: int | None, digest: str) -> str | None:
    """Why a finished transfer is not the official file, or ``None``."""
    if declared is not None and received != declared:
        return f"truncated ({received} of {declared} bytes arrived)"
    if received != item.size:
        return f"{received} bytes, the official file has {item.size}"
    if digest != item.sha256:
        return f"SHA-256 {digest[:16]}… differs from the official {item.sha256[:16]}…"
    return None
