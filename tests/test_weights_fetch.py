"""`fedleak weights fetch`: downloads only on request, checked by SHA-256 and size, written atomically —
against a loopback HTTP server serving small stand-in files in the real files' layouts."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from fedleak import weights
from fedleak.errors import FedleakError
from fedleak.metrics.lpips import find_weights, load_lpips, lpips_scorers
from fedleak.weights import WeightFile, fetch
from tests.test_cli import TINY, fedleak
from tests.test_lpips import stand_in_backbone, stand_in_linear


def saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


BACKBONE = saved(stand_in_backbone("alex"))
LINEAR = saved(stand_in_linear("alex"))


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server: ``routes[path] = (body, Content-Length or None)``; ``hits`` lists requests.
    A Content-Length larger than the body makes it close the connection early (a truncated transfer)."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    routes: dict[str, tuple[bytes, int | None]] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path not in routes:
                self.send_error(404)
                return
            body, length = routes[self.path]
            self.send_response(200)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", routes=routes, hits=hits)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty torch hub cache, and no other place the LPIPS lookup would search."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def entry(server, name: str, body: bytes, served: bytes | None = None, length: int | None = -1) -> WeightFile:
    """A table entry for ``body`` (its true hash and size); the server sends ``served`` (default
    ``body``) with Content-Length ``length`` (-1: the served size, None: no header)."""
    served = body if served is None else served
    server.routes[f"/{name}"] = (served, len(served) if length == -1 else length)
    return WeightFile(name, f"{server.url}/{name}", hashlib.sha256(body).hexdigest(), len(body))


def table(server, **backbone) -> dict[str, tuple[WeightFile, ...]]:
    return {"alex": (entry(server, "alexnet-owt-00000000.pth", BACKBONE, **backbone),
                     entry(server, "lpips_alex.pth", LINEAR))}


def test_a_good_download_is_found_by_the_lpips_lookup(server, cache):
    got = fetch("alex", sources=table(server), progress=False)
    assert [(g.path.name, g.downloaded) for g in got] == [("alexnet-owt-00000000.pth", True), ("lpips_alex.pth", True)]
    assert find_weights("alex") == (cache / "alexnet-owt-00000000.pth", cache / "lpips_alex.pth")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert (load_lpips("alex")(x, x.flip(-1)) > 0).all()
    assert sorted(p.name for p in cache.iterdir()) == ["alexnet-owt-00000000.pth", "lpips_alex.pth"]  # no temp files
    requests = len(server.hits)
    again = fetch("alex", sources=table(server), progress=False)
    assert not any(g.downloaded for g in again) and len(server.hits) == requests  # kept, not fetched again


def test_a_wrong_file_in_the_cache_is_replaced(server, cache):
    cache.mkdir(parents=True)
    (cache / "lpips_alex.pth").write_bytes(b"an old, damaged copy")
    got = fetch("alex", sources=table(server), progress=False)
    assert all(g.downloaded for g in got) and (cache / "lpips_alex.pth").read_bytes() == LINEAR


@pytest.mark.parametrize("served, message", [
    (dict(served=BACKBONE[:-1] + b"x"), "SHA-256"),  # corrupt: right size, wrong bytes
    (dict(served=BACKBONE[: len(BACKBONE) // 2], length=len(BACKBONE)), "truncated"),  # closes early
    (dict(served=BACKBONE[: len(BACKBONE) // 2], length=None), "the official file has"),  # short, no length
    (dict(served=BACKBONE + b"more"), "the official file has"),
])
def test_a_bad_download_is_rejected_in_one_line_and_leaves_nothing(server, cache, tmp_path, monkeypatch, capsys,
                                                                   served, message):
    monkeypatch.setitem(weights.SOURCES, "alex", table(server, **served)["alex"])
    folder = tmp_path / "weights"
    code, _, err = fedleak(monkeypatch, capsys, "weights", "fetch", "alex", "--dir", str(folder), "-q")
    assert code == 2 and message in err and "rejected" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not folder.exists()  # neither the target nor a temporary file, nor the folder the command made


def test_a_failed_fetch_keeps_a_folder_that_was_there(server, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(weights.SOURCES, "alex", table(server, served=b"wrong")["alex"])
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's")
    code, _, _ = fedleak(monkeypatch, capsys, "weights", "fetch", "alex", "--dir", str(folder / "a" / "b"), "-q")
    assert code == 2 and [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_interrupted_download_leaves_nothing(server, cache, monkeypatch):
    def interrupted(*args):  # Ctrl-C once the whole body sits in the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "_problem", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch("alex", sources=table(server), progress=False)
    assert not cache.exists()  # not even the cache folder this call made


def test_an_unreachable_file_is_one_clear_error(server, cache):
    sources = {"alex": (WeightFile("alexnet-owt-1.pth", f"{server.url}/missing", "0" * 64, 1),)}
    with pytest.raises(FedleakError, match="cannot download alexnet-owt-1.pth .*404"):
        fetch("alex", sources=sources, progress=False)
    assert not cache.exists()  # not even the cache folder this call made


def test_the_command_fetches_into_a_folder_runs_can_be_pointed_at(server, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(weights.SOURCES, "alex", table(server)["alex"])
    folder = tmp_path / "w"
    code, out, err = fedleak(monkeypatch, capsys, "weights", "fetch", "alex", "--dir", str(folder), "-q")
    assert code == 0, err
    assert "lpips_alex.pth downloaded" in out and f"metrics.lpips_weights={folder}" in err
    assert find_weights("alex", folder) == (folder / "alexnet-owt-00000000.pth", folder / "lpips_alex.pth")


def test_unknown_backbone_is_exit_2_and_downloads_nothing(server, monkeypatch, capsys):
    monkeypatch.setitem(weights.SOURCES, "alex", table(server)["alex"])
    code, _, err = fedleak(monkeypatch, capsys, "weights", "fetch", "alex", "nosuch")
    assert code == 2 and err.strip() == "fedleak: error: unknown LPIPS backbone 'nosuch'; choose one of: alex, vgg"
    assert server.hits == []  # the good name before it was not fetched either


def test_the_official_table_pins_full_hashes_matching_torchvisions_file_names():
    for net, files in weights.SOURCES.items():
        backbone, linear = files
        prefix = backbone.name.rsplit("-", 1)[1].removesuffix(".pth")  # torchvision: name-<sha256[:8]>.pth
        assert backbone.sha256.startswith(prefix) and len(backbone.sha256) == 64, net
        assert backbone.url.startswith("https://download.pytorch.org/models/") and linear.url.startswith("https://")
        assert linear.name == f"lpips_{net}.pth"  # a name the LPIPS lookup accepts


class NetworkUsed(AssertionError):
    pass


def no_network(*args, **kwargs):
    raise NetworkUsed("something opened a socket")


def test_nothing_downloads_unless_asked(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    scorers, hints = lpips_scorers(["alex", "vgg"])
    assert scorers == {"alex": None, "vgg": None} and "fedleak weights fetch alex" in hints[0]
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(tmp_path / "run"))
    assert code == 0, err  # a whole attack, LPIPS n/a, without a socket
    assert not cache.exists()
