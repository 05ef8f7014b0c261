"""The bad-input matrix (issue 13): every command, every family of bad input, one table.

Each case is an argv whose ``{placeholders}`` name files a builder makes in the case's own folder
(a hostile checkpoint, a broken CIFAR batch, a corrupt study folder, …). Every case must end the same
way: exit code 2, exactly one stderr line starting ``fedleak: error:`` (and no warning, which a
console would print as more lines), no traceback, a message no longer than a line, nothing created, changed or removed anywhere in the case's folder (so nothing
half-written in the output location), and no marker file from a hostile input that tried to run
``touch``. The CLI runs in-process (``fedleak.cli.main``), so the whole matrix takes seconds.

Read-only and full-disk cases write to small tmpfs mounts; they need root (``mount``) and skip,
saying why, elsewhere.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import numpy as np
import pytest
from PIL import Image

from fedleak.cli import main

MARKER = "PWNED"  # what a hostile input would create with `touch`
MAX_LINE = 500  # an error line longer than this echoes too much


# ---------------------------------------------------------------- builders: name → files in a folder

def write_idx(path: Path, array: np.ndarray, magic: int = 0x08) -> None:
    header = bytes([0, 0, magic, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def mnist(d: Path, labels=None, images=None, magic: int = 0x08) -> Path:
    root = d / "mnist"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8) if images is None else images
    labs = (np.arange(12) % 10).astype(np.uint8) if labels is None else labels
    for split in ("t10k", "train"):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", imgs, magic)
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labs)
    return root


class Evil:
    """Unpickling this runs ``touch MARKER`` — unless the unpickler refuses ``os.system``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def cifar(d: Path, change: Callable[[dict], object] | None = None, raw: bytes | None = None) -> Path:
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("data_batch_1", 20), ("test_batch", 10)):
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)],
                 b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        body = change(batch) if change else batch
        (folder / name).write_bytes(raw if raw is not None else pickle.dumps(body, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return d / "cifar"


def changed(**items):
    def change(batch: dict) -> dict:
        return {**batch, **{k.encode(): v for k, v in items.items()}}

    return change


def dropped(key: str):
    def change(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != key.encode()}

    return change


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width``×``height`` grey pixels (and holds no real image data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def faces(d: Path, bad: tuple[str, bytes] | None = None, images: bool = True) -> Path:
    root = d / "faces"
    rng = np.random.default_rng(2)
    for person in ("s1", "s2"):
        (root / person).mkdir(parents=True)
        for k in range(3 if images else 0):
            Image.fromarray(rng.integers(0, 256, size=(14, 12), dtype=np.uint8)).save(root / person / f"{k}.png")
    if bad:
        (root / "s1" / bad[0]).write_bytes(bad[1])
    return root


def checkpoint(d: Path, change: Callable[[dict], dict] | None = None, name: str = "model.safetensors",
               raw: bytes | None = None, metadata: str | None = None) -> Path:
    """A valid fedleak checkpoint of LeNet (10 classes, 3×8×8), its metadata then ``change``d."""
    from safetensors.torch import save_file

    from fedleak.models import create_model
    from fedleak.models.checkpoint import CheckpointInfo, METADATA_KEY, save_checkpoint

    path = d / name
    model = create_model("lenet", 10, 3, 8, width=1.0, seed=0)
    save_checkpoint(path, model, CheckpointInfo(architecture="lenet", num_classes=10, in_channels=3, image_size=8,
                                                width=1.0, dataset="cifar10"))
    if raw is not None:
        path.write_bytes(raw(path.read_bytes()) if callable(raw) else raw)
    elif change or metadata is not None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()[METADATA_KEY])
            state = {k: f.get_tensor(k) for k in f.keys()}
        text = metadata if metadata is not None else json.dumps(change(meta))
        save_file(state, str(path), metadata={METADATA_KEY: text})
    return path


def meta(**items):
    return lambda m: {**m, **items}


def evil_checkpoint(d: Path) -> Path:
    return checkpoint(d, meta(architecture="os:system", options={"command": f"touch {d / MARKER}"}), name="evil.safetensors")


def evil_pt(d: Path) -> Path:
    path = d / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil(d / MARKER)}))
    return path


def prior(d: Path, change: Callable[[dict], dict] | None = None, metadata: str | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fedleak.attacks.restoration_prior import PRIOR_KEY, RestorationPriorInfo, RestorationNet, save_prior

    path = d / "prior.safetensors"
    save_prior(path, RestorationNet(3, 4, 2), RestorationPriorInfo(channels=3, scale=2, width=4, depth=2))
    with safe_open(str(path), "pt") as f:
        info = json.loads(f.metadata()[PRIOR_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}
    text = metadata if metadata is not None else json.dumps(change(info) if change else info)
    save_file(state, str(path), metadata={PRIOR_KEY: text})
    return path


def text_file(name: str, text: str | bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.replace("{d}", str(d)).encode())
        return path

    return build


BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
PYTAG = "data: !!python/object/apply:os.system ['touch {d}/" + MARKER + "']\n"


# A finished two-run study folder, made once per session and copied into each case that needs it.
STUDY_ARGS = ["--set", "image_size=8", "--set", "model=lenet", "--set", "width=1.0", "--set", "images=[0]",
              "--set", "alphas=[0.0, 0.1]", "--set", "attack.iterations=2"]


@pytest.fixture(scope="session")
def study_template(tmp_path_factory) -> Path:
    from fedleak.studies import build_study
    from tests.studying import run_study

    base = tmp_path_factory.mktemp("template")
    root = cifar(base)
    overrides = [f"root={root}", *STUDY_ARGS[1::2]]
    run_study(build_study("tv", "cpu", overrides=overrides), "cpu", base / "st", progress=False)
    return base / "st"


def study_folder(edit: Callable[[Path], None] | None = None):
    def build(d: Path, template: Path) -> Path:
        folder = d / "st"
        shutil.copytree(template, folder)
        if edit:
            edit(folder)
        return folder

    build.needs_template = True  # type: ignore[attr-defined]
    return build


def template_root(d: Path, template: Path) -> Path:
    """The data folder the template study was run on (a grid is also its data's location)."""
    return template.parent / "cifar"


template_root.needs_template = True  # type: ignore[attr-defined]


def edit_meta(change: Callable[[dict], object]):
    def edit(folder: Path) -> None:
        data = json.loads((folder / "study.json").read_text())
        (folder / "study.json").write_text(json.dumps(change(data)))

    return edit


def write_bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def sql(*statements: str):
    def edit(folder: Path) -> None:
        import sqlite3

        conn = sqlite3.connect(folder / "results.sqlite")
        with conn:
            for s in statements:
                conn.execute(s)
        conn.close()

    return edit


def foreign_db(folder: Path) -> None:
    import sqlite3

    (folder / "results.sqlite").unlink()
    conn = sqlite3.connect(folder / "results.sqlite")
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()


def nonempty(d: Path) -> Path:
    (d / "nonempty").mkdir()
    (d / "nonempty" / "notes.txt").write_text("mine")
    return d / "nonempty"


def a_file(d: Path) -> Path:
    (d / "afile").write_text("a regular file")
    return d / "afile"


def a_dir(name: str):
    def build(d: Path) -> Path:
        (d / name).mkdir()
        return d / name

    return build


BUILDERS: dict[str, Callable] = {
    # data
    "cifar": cifar,
    "cifar_label10": lambda d: cifar(d, changed(labels=[10] * 10)),
    "cifar_label_neg": lambda d: cifar(d, changed(labels=[-1] * 10)),
    "cifar_labels_int": lambda d: cifar(d, changed(labels=3)),
    "cifar_no_images": lambda d: cifar(d, changed(data=np.zeros((0, 3072), np.uint8), labels=[])),
    "cifar_no_data": lambda d: cifar(d, dropped("data")),
    "cifar_wrong_shape": lambda d: cifar(d, changed(data=np.zeros((10, 100), np.uint8))),
    "cifar_evil": lambda d: cifar(d, lambda b: {**b, b"labels": Evil(d / MARKER)}),
    "cifar_garbage": lambda d: cifar(d, raw=b"\x00not a pickle at all"),
    "cifar_truncated": lambda d: cifar(d, raw=pickle.dumps({b"data": np.zeros((10, 3072), np.uint8)})[:60]),
    "mnist_label12": lambda d: mnist(d, labels=np.full(12, 12, np.uint8)),
    "mnist_magic": lambda d: mnist(d, magic=0x0D),
    "mnist_count": lambda d: mnist(d, labels=np.zeros(5, np.uint8)),
    "mnist_empty": lambda d: mnist(d, images=np.zeros((0, 28, 28), np.uint8), labels=np.zeros(0, np.uint8)),
    "faces_bomb": lambda d: faces(d, ("big.png", png_header(30000, 30000))),
    "faces_truncated": lambda d: faces(d, ("cut.png", png_header(12, 14)[:30])),
    "faces_not_image": lambda d: faces(d, ("fake.png", b"this is text, not a PNG")),
    "faces_empty_file": lambda d: faces(d, ("zero.png", b"")),
    "faces_none": lambda d: faces(d, images=False),
    # checkpoints and priors
    "ckpt_width_str": lambda d: checkpoint(d, meta(width="abc")),
    "ckpt_width_neg": lambda d: checkpoint(d, meta(width=-1.0)),
    "ckpt_size_str": lambda d: checkpoint(d, meta(image_size="big")),
    "ckpt_size_huge": lambda d: checkpoint(d, meta(image_size=10**9)),
    "ckpt_options_list": lambda d: checkpoint(d, meta(options=[1, 2])),
    "ckpt_options_unknown": lambda d: checkpoint(d, meta(options={"nosuch": 1})),
    "ckpt_classes_str": lambda d: checkpoint(d, meta(num_classes="ten")),
    "ckpt_classes_huge": lambda d: checkpoint(d, meta(num_classes=10**12)),
    "ckpt_channels": lambda d: checkpoint(d, meta(in_channels=7)),
    "ckpt_arch_unknown": lambda d: checkpoint(d, meta(architecture="nonet")),
    "ckpt_evil": evil_checkpoint,
    "ckpt_evil_pt": evil_pt,
    "ckpt_meta_not_json": lambda d: checkpoint(d, metadata="{not json"),
    "ckpt_meta_list": lambda d: checkpoint(d, metadata="[1, 2]"),
    "ckpt_garbage": lambda d: checkpoint(d, raw=os.urandom(256)),
    "ckpt_zero": lambda d: checkpoint(d, raw=b""),
    "ckpt_truncated": lambda d: checkpoint(d, raw=lambda b: b[: len(b) // 2]),
    "ckpt_dir": a_dir("dir.safetensors"),
    "prior_width_str": lambda d: prior(d, lambda m: {**m, "width": "x%s"}),
    "prior_not_json": lambda d: prior(d, metadata="{oops"),
    "prior_depth_huge": lambda d: prior(d, lambda m: {**m, "depth": 10**9}),
    "prior_plain_ckpt": lambda d: checkpoint(d),
    # configs
    "yaml_bomb": text_file("bomb.yaml", BOMB),
    "yaml_pytag": text_file("tag.yaml", PYTAG),
    "yaml_invalid": text_file("bad.yaml", "data: [unclosed\n"),
    "yaml_list": text_file("list.yaml", "- 1\n- 2\n"),
    "yaml_binary": text_file("bin.yaml", b"\xff\xfe\x00\x81garbage"),
    "yaml_unknown": text_file("unknown.yaml", "nosuch: 1\n"),
    "yaml_recursive": text_file("rec.yaml", "data: &a [*a]\n"),
    "yaml_deep": text_file("deep.yaml", "data: " + "[" * 5000 + "]" * 5000 + "\n"),
    "yaml_huge_value": text_file("huge.yaml", "data:\n  name: [" + ", ".join(["0"] * 20000) + "]\n"),
    "yaml_study_bomb": text_file("sbomb.yaml", BOMB.replace("a: &a", "images: &a").replace("i: &i", "seeds: &i")),
    "yaml_study_list": text_file("slist.yaml", "- alphas\n"),
    # outputs
    "afile": a_file,
    "adir": a_dir("adir"),
    "adir_st": a_dir("adir.safetensors"),
    "nonempty": nonempty,
    "existing_ckpt": text_file("existing.safetensors", "already here"),
    # study folders
    "st": study_folder(),
    "st_garbage_json": study_folder(write_bytes("study.json", b"{not json")),
    "st_binary_json": study_folder(write_bytes("study.json", b"\xff\xfe\x00")),
    "st_deep_json": study_folder(write_bytes("study.json", b"[" * 100000 + b"]" * 100000)),
    "st_list_json": study_folder(edit_meta(lambda m: [m])),
    "st_no_study": study_folder(edit_meta(lambda m: {k: v for k, v in m.items() if k != "study"})),
    "st_no_settings": study_folder(edit_meta(lambda m: {k: v for k, v in m.items() if k != "settings"})),
    "st_no_preset": study_folder(edit_meta(lambda m: {k: v for k, v in m.items() if k != "preset"})),
    "st_settings_str": study_folder(edit_meta(lambda m: {**m, "settings": "alphas"})),
    "st_setting_type": study_folder(edit_meta(lambda m: {**m, "settings": {**m["settings"], "alphas": "many"}})),
    "st_setting_unknown": study_folder(edit_meta(lambda m: {**m, "settings": {**m["settings"], "nosuch": 1}})),
    "st_study_unknown": study_folder(edit_meta(lambda m: {**m, "study": "nostudy"})),
    "st_study_int": study_folder(edit_meta(lambda m: {**m, "study": 7})),
    "st_huge_value": study_folder(edit_meta(lambda m: {**m, "settings": {**m["settings"], "images": "x" * 100000}})),
    "st_no_db": study_folder(lambda f: (f / "results.sqlite").unlink()),
    "st_db_garbage": study_folder(write_bytes("results.sqlite", b"not a database " * 200)),
    "st_db_foreign": study_folder(foreign_db),
    "st_db_columns": study_folder(sql("DROP TABLE runs", "CREATE TABLE runs (key TEXT, value TEXT)")),
    "st_db_row_json": study_folder(sql("UPDATE runs SET params = '{broken'")),
    "st_db_row_type": study_folder(sql("UPDATE runs SET metrics = '[1, 2]'")),
    "st_db_row_seconds": study_folder(sql("UPDATE runs SET seconds = 'slow'")),
    "template_cifar": template_root,
    "st_other_grid": study_folder(edit_meta(lambda m: {**m, "settings": {**m["settings"], "alphas": [0.5]}})),
}


# ------------------------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str = ""  # a piece of the message (case-insensitive); "" where another module words it

    @property
    def names(self) -> list[str]:
        return [f for a in self.argv for _, f, _, _ in Formatter().parse(a) if f]


def case(id: str, *argv: str, expect: str = "") -> Case:
    return Case(id, argv, expect)


TINY = ("--image-size", "8", "--model", "lenet", "--iterations", "2", "-q")
ATTACK = ("attack", *TINY, "--out", "{d}/run")
TRAIN = ("train", "--model", "lenet", "--dataset", "cifar10", "--image-size", "8", "--epochs", "1", "-q")
PRIOR = ("train-prior", "--dataset", "cifar10", "--image-size", "8", "--epochs", "1", "-q", "--width", "4", "--depth", "2")
STUDY = ("study", "tv", "-q", *STUDY_ARGS[:-4], "--set", "alphas=[0.0]", "--set", "attack.iterations=2")


def attack_cases() -> list[Case]:
    cifar10 = ("--dataset", "cifar10", "--root")
    data = [
        ("bomb-png", ("--dataset", "folder", "--root", "{faces_bomb}"), ""),
        ("truncated-png", ("--dataset", "folder", "--root", "{faces_truncated}"), ""),
        ("text-as-png", ("--dataset", "folder", "--root", "{faces_not_image}"), ""),
        ("empty-png", ("--dataset", "folder", "--root", "{faces_empty_file}"), ""),
        ("folder-no-images", ("--dataset", "folder", "--root", "{faces_none}"), ""),
        ("root-is-file", ("--dataset", "folder", "--root", "{afile}"), "not a folder"),
        ("root-missing", ("--dataset", "mnist", "--root", "{d}/nowhere"), "does not exist"),
        ("mnist-label-12", ("--dataset", "mnist", "--root", "{mnist_label12}"), "label"),
        ("mnist-magic", ("--dataset", "mnist", "--root", "{mnist_magic}"), "IDX"),
        ("mnist-count", ("--dataset", "mnist", "--root", "{mnist_count}"), ""),
        ("mnist-empty", ("--dataset", "mnist", "--root", "{mnist_empty}"), ""),
        ("cifar-label-10", (*cifar10, "{cifar_label10}"), "label"),
        ("cifar-label-negative", (*cifar10, "{cifar_label_neg}"), "label"),
        ("cifar-labels-int", (*cifar10, "{cifar_labels_int}"), "labels"),
        ("cifar-no-images", (*cifar10, "{cifar_no_images}"), ""),
        ("cifar-no-data", (*cifar10, "{cifar_no_data}"), "data"),
        ("cifar-wrong-shape", (*cifar10, "{cifar_wrong_shape}"), ""),
        ("cifar-evil-pickle", (*cifar10, "{cifar_evil}"), "not allowed"),
        ("cifar-garbage", (*cifar10, "{cifar_garbage}"), ""),
        ("cifar-truncated", (*cifar10, "{cifar_truncated}"), ""),
        ("unknown-loader-option", ("--set", "data.options.nosuch=1"), "nosuch"),
        ("index-out-of-range", ("--index", "999999"), ""),
        ("index-negative", ("--index", "-1"), ""),
        ("unknown-dataset", ("--dataset", "imagenet"), "unknown dataset"),
        ("unknown-class", ("--class", "nosuchclass"), ""),
        ("bad-split", ("--set", "data.split=valid"), "split"),
        ("channels-2", ("--set", "data.channels=2"), "channels"),
        ("image-size-0", ("--set", "data.image_size=0"), ""),
        ("image-size-negative", ("--set", "data.image_size=-3"), ""),
    ]
    numbers = [
        ("seed-overflow", ("--seed", "99999999999999999999999"), "seed"),
        ("seed-negative", ("--seed", "-1"), "seed"),
        ("seed-float", ("--set", "seed=1.5"), "seed"),
        ("model-seed-overflow", ("--set", "model.seed=99999999999999999999999"), "seed"),
        ("shuffle-seed-negative", ("--set", "client.shuffle_seed=-1"), "seed"),
        ("tv-inf", ("--set", "attack.tv=.inf"), "tv"),
        ("tv-nan", ("--set", "attack.tv=.nan"), "tv"),
        ("lr-inf", ("--set", "attack.lr=.inf"), "lr"),
        ("lr-nan", ("--set", "attack.lr=.nan"), "lr"),
        ("regularizer-inf", ("--set", "attack.regularizers={{tv: .inf}}"), "regularizers"),
        ("rog-lr-min-inf", ("--attack", "rog", "--set", "attack.lr_min=.inf"), "lr_min"),
        ("dlg-lr-nan", ("--attack", "dlg", "--set", "attack.lr=.nan"), "lr"),
        ("snr-minus-inf", ("--defense", "noise:snr_db=-inf"), "snr_db"),
        ("snr-nan", ("--defense", "noise:snr_db=nan"), "snr_db"),
        ("dp-noise-inf", ("--defense", "dpsgd:noise_multiplier=inf"), "noise_multiplier"),
        ("topk-nan", ("--defense", "topk:sparsity=nan"), "sparsity"),
        ("clip-inf", ("--defense", "clip:c=inf"), "c"),
        ("client-lr-inf", ("--set", "client.lr=.inf"), "lr"),
        ("width-inf", ("--width", "inf"), "width"),
        ("width-nan", ("--set", "model.width=.nan"), "width"),
        ("iterations-0", ("--iterations", "0"), "iterations"),
        ("iterations-negative", ("--iterations", "-5"), "iterations"),
        ("batch-size-0", ("--batch-size", "0"), "batch_size"),
        ("restarts-0", ("--restarts", "0"), "restarts"),
        ("local-steps-0", ("--local-steps", "0"), "local_steps"),
        ("local-batch-0", ("--set", "client.local_batch_size=0"), "local_batch_size"),
    ]
    ckpt = [(f"checkpoint-{n.removeprefix('ckpt_').replace('_', '-')}", ("--checkpoint", f"{{{n}}}"), "")
            for n in BUILDERS if n.startswith("ckpt_")]
    ckpt += [
        ("checkpoint-missing", ("--checkpoint", "{d}/none.safetensors"), "none.safetensors"),
        ("prior-width-str", ("--attack", "rog", "--prior", "{prior_width_str}"), ""),
        ("prior-not-json", ("--attack", "rog", "--prior", "{prior_not_json}"), ""),
        ("prior-depth-huge", ("--attack", "rog", "--prior", "{prior_depth_huge}"), ""),
        ("prior-is-a-checkpoint", ("--attack", "rog", "--prior", "{prior_plain_ckpt}"), "prior"),
        ("prior-missing", ("--attack", "rog", "--prior", "{d}/none.safetensors"), ""),
    ]
    configs = [
        ("yaml-alias-bomb", ("-c", "{yaml_bomb}"), "YAML expands"),
        ("yaml-python-tag", ("-c", "{yaml_pytag}"), "YAML"),
        ("yaml-invalid", ("-c", "{yaml_invalid}"), "YAML"),
        ("yaml-list", ("-c", "{yaml_list}"), "mapping"),
        ("yaml-binary", ("-c", "{yaml_binary}"), ""),
        ("yaml-missing", ("-c", "{d}/none.yaml"), "not found"),
        ("yaml-is-dir", ("-c", "{adir}"), ""),
        ("yaml-unknown-key", ("-c", "{yaml_unknown}"), "nosuch"),
        ("yaml-recursive", ("-c", "{yaml_recursive}"), "recursive"),
        ("yaml-deep", ("-c", "{yaml_deep}"), "deep"),
        ("yaml-huge-value", ("-c", "{yaml_huge_value}"), "data.name"),
        ("preset-dotdot", ("--attack", "../../x"), "not a name"),
        ("preset-absolute", ("--attack", "/etc/passwd"), "not a name"),
        ("preset-dotdot-set", ("--set", "attack.name=../presets/ig-limchan"), "not a name"),
        ("set-no-key", ("--set", "=1"), "malformed"),
        ("set-empty-part", ("--set", "data..name=x"), "malformed"),
        ("set-no-equals", ("--set", "data.name"), "malformed"),
        ("set-section-scalar", ("--set", "data=1"), "data"),
        ("set-through-scalar", ("--seed", "3", "--set", "seed.x=1"), "not a section"),
        ("set-python-tag", ("--set", f"data.name=!!python/object/apply:os.system ['touch {{d}}/{MARKER}']"), ""),
        ("set-undefined-alias", ("--set", "seed=*a"), "malformed"),
        ("set-recursive-alias", ("--set", "data.index=&a [*a]"), "recursive"),
        ("set-invalid-yaml", ("--set", "data.name=[unclosed"), "malformed"),
        ("set-long-value", ("--set", "data.name=" + "x" * 100000), "unknown dataset"),
        ("set-long-key", ("--set", "data." + "k" * 100000 + "=1"), "unknown config key"),
        ("set-unknown-attack-key", ("--set", "attack.nosuch=1"), "nosuch"),
        ("unknown-model", ("--model", "vgg99"), "unknown model"),
        ("unknown-attack", ("--attack", "magic"), "unknown attack"),
        ("unknown-defense", ("--defense", "nodefense"), "defense"),
    ]
    output = [
        ("out-under-file", ("--out", "{afile}/run"), "afile"),
        ("out-is-file", ("--out", "{afile}"), "not a folder"),
        ("out-not-empty", ("--out", "{nonempty}"), "not empty"),
        ("out-read-only", ("--out", "{ro}/run"), "not writable"),
        ("out-read-only-nested", ("--out", "{ro}/a/b/run"), "not writable"),
        ("out-disk-full", ("--out", "{full}/run"), "no space left"),
    ]
    usage = [("unknown-option", ("--nosuch",), "no such option"),
             ("int-not-int", ("--iterations", "many"), "iterations"),
             ("missing-value", ("--seed",), "seed")]
    cases = []
    for family, rows in (("data", data), ("numbers", numbers), ("checkpoint", ckpt), ("config", configs),
                         ("usage", usage)):
        cases += [case(f"attack/{family}/{n}", *ATTACK, *args, expect=e) for n, args, e in rows]
    # output cases name their own --out (the last --out wins in Typer, but keep argv honest)
    cases += [case(f"attack/output/{n}", "attack", *TINY, *args, expect=e) for n, args, e in output]
    return cases


def train_cases() -> list[Case]:
    out = ("--out", "{d}/m.safetensors")
    rows = [
        ("data/bomb-png", ("--dataset", "folder", "--root", "{faces_bomb}"), ""),
        ("data/truncated-png", ("--dataset", "folder", "--root", "{faces_truncated}"), ""),
        ("data/folder-no-images", ("--dataset", "folder", "--root", "{faces_none}"), ""),
        ("data/mnist-label-12", ("--dataset", "mnist", "--root", "{mnist_label12}"), "label"),
        ("data/cifar-label-10", ("--root", "{cifar_label10}"), "label"),
        ("data/cifar-labels-int", ("--root", "{cifar_labels_int}"), "labels"),
        ("data/cifar-no-images", ("--root", "{cifar_no_images}"), ""),
        ("data/cifar-evil-pickle", ("--root", "{cifar_evil}"), "not allowed"),
        ("data/unknown-dataset", ("--dataset", "imagenet"), "unknown dataset"),
        ("data/root-missing", ("--root", "{d}/nowhere"), "does not exist"),
        ("data/channels-2", ("--root", "{cifar}", "--channels", "2"), "channels"),
        ("data/image-size-0", ("--root", "{cifar}", "--image-size", "0"), ""),
        ("data/limit-0", ("--root", "{cifar}", "--limit", "0"), "limit"),
        ("data/test-fraction-2", ("--root", "{cifar}", "--test-fraction", "2"), "fraction"),
        ("numbers/test-fraction-nan", ("--root", "{cifar}", "--test-fraction", "nan"), "finite"),
        ("numbers/seed-overflow", ("--root", "{cifar}", "--seed", "99999999999999999999999"), "seed"),
        ("numbers/seed-negative", ("--root", "{cifar}", "--seed", "-1"), "seed"),
        ("numbers/lr-inf", ("--root", "{cifar}", "--lr", "inf"), "finite"),
        ("numbers/lr-nan", ("--root", "{cifar}", "--lr", "nan"), "finite"),
        ("numbers/lr-0", ("--root", "{cifar}", "--lr", "0"), "lr"),
        ("numbers/epochs-0", ("--root", "{cifar}", "--epochs", "0"), "epochs"),
        ("numbers/batch-size-0", ("--root", "{cifar}", "--batch-size", "0"), "batch size"),
        ("numbers/width-inf", ("--root", "{cifar}", "--width", "inf"), "finite"),
        ("numbers/width-0", ("--root", "{cifar}", "--width", "0"), ""),
        ("config/option-unknown", ("--root", "{cifar}", "--option", "nosuch=1"), "nosuch"),
        ("config/option-malformed", ("--root", "{cifar}", "--option", "norm"), "malformed"),
        ("config/model-unknown", ("--root", "{cifar}", "--model", "nonet"), "unknown model"),
    ]
    cases = [case(f"train/{n}", *TRAIN, *out, *args, expect=e) for n, args, e in rows]
    outputs = [
        ("under-file", "{afile}/m.safetensors", "afile"),
        ("suffix", "{d}/m.txt", ".safetensors"),
        ("exists", "{existing_ckpt}", "exists"),
        ("is-dir", "{adir_st}", "folder"),
        ("read-only", "{ro}/m.safetensors", "not writable"),
        ("disk-full", "{full}/m.safetensors", "could not write"),
    ]
    cases += [case(f"train/output/{n}", *TRAIN, "--root", "{cifar}", "--out", o, expect=e) for n, o, e in outputs]
    cases += [case("train/usage/no-model", "train", "--dataset", "cifar10", expect="model"),
              case("train/usage/no-dataset", "train", "--model", "lenet", expect="dataset")]
    return cases


def prior_cases() -> list[Case]:
    out = ("--out", "{d}/p.safetensors")
    rows = [
        ("data/bomb-png", ("--dataset", "folder", "--root", "{faces_bomb}"), ""),
        ("data/folder-no-images", ("--dataset", "folder", "--root", "{faces_none}"), ""),
        ("data/cifar-no-images", ("--root", "{cifar_no_images}"), ""),
        ("data/cifar-evil-pickle", ("--root", "{cifar_evil}"), "not allowed"),
        ("data/cifar-garbage", ("--root", "{cifar_garbage}"), ""),
        ("data/unknown-dataset", ("--dataset", "imagenet"), "unknown dataset"),
        ("data/bad-split", ("--root", "{cifar}", "--split", "valid"), "split"),
        ("data/image-size-0", ("--root", "{cifar}", "--image-size", "0"), ""),
        ("data/limit-0", ("--root", "{cifar}", "--limit", "0"), ""),
        ("numbers/seed-overflow", ("--root", "{cifar}", "--seed", "99999999999999999999999"), "seed"),
        ("numbers/seed-negative", ("--root", "{cifar}", "--seed", "-1"), "seed"),
        ("numbers/lr-inf", ("--root", "{cifar}", "--lr", "inf"), "finite"),
        ("numbers/noise-nan", ("--root", "{cifar}", "--noise", "nan"), "finite"),
        ("numbers/noise-negative", ("--root", "{cifar}", "--noise", "-1"), "noise"),
        ("numbers/scale-0", ("--root", "{cifar}", "--scale", "0"), "scale"),
        ("numbers/width-0", ("--root", "{cifar}", "--width", "0"), "width"),
        ("numbers/depth-1", ("--root", "{cifar}", "--depth", "1"), "depth"),
        ("numbers/epochs-0", ("--root", "{cifar}", "--epochs", "0"), "epochs"),
        ("numbers/batch-size-0", ("--root", "{cifar}", "--batch-size", "0"), "batch size"),
    ]
    cases = [case(f"train-prior/{n}", *PRIOR, *out, *args, expect=e) for n, args, e in rows]
    outputs = [
        ("under-file", "{afile}/p.safetensors", "afile"),
        ("suffix", "{d}/p.bin", ".safetensors"),
        ("exists", "{existing_ckpt}", "exists"),
        ("is-dir", "{adir_st}", "folder"),
        ("read-only", "{ro}/p.safetensors", "not writable"),
        ("disk-full", "{full}/p.safetensors", "could not write"),
    ]
    cases += [case(f"train-prior/output/{n}", *PRIOR, "--root", "{cifar}", "--out", o, expect=e)
              for n, o, e in outputs]
    cases.append(case("train-prior/usage/no-dataset", "train-prior", expect="dataset"))
    return cases


def study_cases() -> list[Case]:
    out = ("--out", "{d}/new")
    rows = [
        ("data/bomb-png", ("--set", "dataset=folder", "--set", "root={faces_bomb}"), ""),
        ("data/mnist-label-12", ("--set", "dataset=mnist", "--set", "root={mnist_label12}"), "label"),
        ("data/cifar-evil-pickle", ("--set", "root={cifar_evil}"), "not allowed"),
        ("data/cifar-no-images", ("--set", "root={cifar_no_images}"), ""),
        ("data/image-out-of-range", ("--set", "root={cifar}", "--set", "images=[99999]"), ""),
        ("data/unknown-dataset", ("--set", "dataset=imagenet"), "unknown dataset"),
        ("data/root-missing", ("--root", "{d}/nowhere"), "does not exist"),
        ("numbers/seed-overflow", ("--set", "root={cifar}", "--set", "seeds=[99999999999999999999999]"), "seed"),
        ("numbers/seed-negative", ("--set", "root={cifar}", "--set", "seeds=[-1]"), "seed"),
        ("numbers/alpha-inf", ("--set", "root={cifar}", "--set", "alphas=[.inf]"), "tv"),
        ("numbers/alpha-nan", ("--set", "root={cifar}", "--set", "alphas=[.nan]"), "tv"),
        ("numbers/lr-inf", ("--set", "root={cifar}", "--set", "attack.lr=.inf"), "lr"),
        ("numbers/width-nan", ("--set", "root={cifar}", "--set", "width=.nan"), "width"),
        ("numbers/client-lr-inf", ("--set", "root={cifar}", "--set", "client.lr=.inf"), "lr"),
        ("checkpoint/evil", ("--set", "root={cifar}", "--set", "checkpoint={ckpt_evil}"), ""),
        ("checkpoint/garbage", ("--set", "root={cifar}", "--set", "checkpoint={ckpt_garbage}"), ""),
        ("checkpoint/width-str", ("--set", "root={cifar}", "--set", "checkpoint={ckpt_width_str}"), ""),
        ("config/yaml-alias-bomb", ("--set", "root={cifar}", "-c", "{yaml_study_bomb}"), "YAML expands"),
        ("config/yaml-python-tag", ("--set", "root={cifar}", "-c", "{yaml_pytag}"), "YAML"),
        ("config/yaml-list", ("--set", "root={cifar}", "-c", "{yaml_study_list}"), "mapping"),
        ("config/unknown-key", ("--set", "root={cifar}", "--set", "nosuch=1"), "nosuch"),
        ("config/preset-dotdot", ("--set", "root={cifar}", "--set", "attack.name=../../x"), "not a name"),
        ("config/unknown-preset", ("--set", "root={cifar}", "--preset", "../full"), "no preset"),
        ("output/out-is-file", ("--set", "root={cifar}", "--out", "{afile}"), "not a folder"),
        ("output/out-under-file", ("--set", "root={cifar}", "--out", "{afile}/st"), "afile"),
        ("output/out-not-a-study", ("--set", "root={cifar}", "--out", "{nonempty}"), "holds no study.json"),
        ("output/out-read-only", ("--set", "root={cifar}", "--out", "{ro}/new"), "not writable"),
        ("output/out-read-only-study", ("--set", "root={cifar}", "--out", "{ro}/st"), "not writable"),
        ("output/out-disk-full", ("--set", "root={cifar}", "--out", "{full}/new"), ""),
        ("folder/corrupt-study-json", ("--set", "root={cifar}", "--out", "{st_garbage_json}"), "not valid JSON"),
        ("folder/other-grid", ("--set", "root={template_cifar}", "--set", "alphas=[0.0, 0.1]", "--out",
                               "{st_other_grid}"), "settings.alphas"),
        ("folder/other-settings", ("--set", "root={cifar}", "--out", "{st}"), "settings."),
    ]
    cases = [case(f"study/{n}", *STUDY, *out, *args, expect=e) for n, args, e in rows]
    cases += [
        case("study/checkpoint/transfer-evil", "study", "transfer", "-q", *STUDY_ARGS[:-4], "--set", "root={cifar}",
             "--set", "batch_sizes=[1]", "--set", "transfer=[{ckpt_evil}]", *out),
        case("study/checkpoint/transfer-garbage", "study", "transfer", "-q", *STUDY_ARGS[:-4], "--set",
             "root={cifar}", "--set", "batch_sizes=[1]", "--set", "transfer=[{ckpt_garbage}]", *out),
        case("study/usage/unknown-study", "study", "nostudy", expect="unknown study"),
        case("study/usage/path-as-study", "study", "../tv", expect="unknown study"),
        case("study/usage/no-name", "study", expect="missing argument"),
    ]
    return cases


FOLDER_DAMAGE = [n for n in BUILDERS if n.startswith("st_") and n != "st_other_grid"]
DB_DAMAGE = ["st_no_db", "st_db_garbage", "st_db_foreign", "st_db_columns", "st_db_row_json", "st_db_row_type",
             "st_db_row_seconds"]


def folder_cases() -> list[Case]:
    cases = [case(f"report/folder/{n.removeprefix('st_').replace('_', '-')}", "report", f"{{{n}}}")
             for n in FOLDER_DAMAGE]
    cases += [case("report/folder/missing", "report", "{d}/nowhere", expect="not a study folder"),
              case("report/folder/is-file", "report", "{afile}", expect="not a study folder"),
              case("report/output/read-only", "report", "{ro}/st", expect="read-only"),
              case("report/output/disk-full", "report", "{full}/st", expect="no space left"),
              case("report/usage/no-folder", "report", expect="missing argument")]
    for command in (("runs", "list"), ("runs", "show"), ("runs", "export")):
        extra = ("0",) if command[1] == "show" else ()
        cases += [case(f"runs-{command[1]}/folder/{n.removeprefix('st_').replace('_', '-')}", *command,
                       f"{{{n}}}", *extra) for n in DB_DAMAGE]
        cases += [case(f"runs-{command[1]}/folder/missing", *command, "{d}/nowhere", *extra,
                       expect="no results database"),
                  case(f"runs-{command[1]}/folder/is-file", *command, "{afile}", *extra,
                       expect="no results database")]
    cases += [
        case("runs-show/key/unknown", "runs", "show", "{st}", "ffffffffffff", expect="no run"),
        case("runs-show/key/ambiguous", "runs", "show", "{st}", "", expect="matches 2 runs"),
        case("runs-show/usage/no-key", "runs", "show", "{st}", expect="missing argument"),
        case("runs-export/output/no-folder", "runs", "export", "{st}", "--out", "{d}/nodir/x.csv", expect="nodir"),
        case("runs-export/output/under-file", "runs", "export", "{st}", "--out", "{afile}/x.csv", expect="afile"),
        case("runs-export/output/is-dir", "runs", "export", "{st}", "--out", "{adir}", expect="folder"),
        case("runs-export/output/read-only", "runs", "export", "{st}", "--out", "{ro}/x.csv", expect="read-only"),
        case("runs-export/output/disk-full", "runs", "export", "{st}", "--out", "{full}/x.csv",
             expect="no space left"),
        case("runs/usage/unknown-command", "runs", "drop", "{st}", expect="no such command"),
    ]
    return cases


def other_cases() -> list[Case]:
    return [
        case("config/unknown-attack", "config", "nosuch", expect="unknown attack"),
        case("config/preset-dotdot", "config", "../../x", expect="not a name"),
        case("config/preset-absolute", "config", "/etc/passwd", expect="not a name"),
        case("config/usage/no-attack", "config", expect="missing argument"),
        case("config/usage/extra-argument", "config", "ig", "extra", expect="unexpected extra argument"),
        case("weights/unknown-net", "weights", "fetch", "nosuch", expect="unknown LPIPS backbone"),
        case("weights/path-as-net", "weights", "fetch", "../alex", expect="unknown LPIPS backbone"),
        case("weights/dir-is-file", "weights", "fetch", "alex", "--dir", "{afile}", "-q", expect="afile"),
        case("weights/dir-under-file", "weights", "fetch", "alex", "--dir", "{afile}/w", "-q", expect="afile"),
        case("weights/dir-read-only", "weights", "fetch", "alex", "--dir", "{ro}/w", "-q", expect="weights folder"),
        case("weights/usage/no-net", "weights", "fetch", expect="missing argument"),
        case("weights/usage/unknown-command", "weights", "drop", expect="no such command"),
        case("fedleak/usage/unknown-command", "nosuch", expect="no such command"),
        case("fedleak/usage/unknown-option", "--nosuch", expect="no such option"),
    ]


CASES = attack_cases() + train_cases() + prior_cases() + study_cases() + folder_cases() + other_cases()


# ---------------------------------------------------------------------------------- the mounts

def _mount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory, study_template):
    """A read-only and a full tmpfs, each holding a copy of the finished study; a string saying why
    not where they cannot be made (not root, no ``mount``)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield "read-only and full-disk cases need root to mount a small tmpfs"
        return
    base = tmp_path_factory.mktemp("mnt")
    ro, full = base / "ro", base / "full"
    mounted: list[Path] = []
    try:
        for target in (ro, full):
            target.mkdir()
            _mount(target, "size=4m")
            mounted.append(target)
            shutil.copytree(study_template, target / "st")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True)
        with open(full / "filler", "wb") as f:  # take every byte left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        result: dict[str, Path] | str = {"ro": ro, "full": full}
    except (subprocess.CalledProcessError, OSError) as exc:
        result = f"cannot mount a tmpfs here: {exc}"
    try:
        yield result
    finally:
        for target in mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ---------------------------------------------------------------------------------- the test

def snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``roots`` with (size, mtime) for files; folders by presence only."""
    found: dict[str, tuple[int, int] | None] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                found[os.path.join(dirpath, name)] = None
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                found[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return found


def test_matrix_is_big_and_covers_every_command():
    commands = {c.id.split("/")[0] for c in CASES}
    assert commands >= {"attack", "train", "train-prior", "study", "report", "runs-list", "runs-show",
                        "runs-export", "config", "weights"}
    families = {c.id.split("/")[1] for c in CASES}
    assert families >= {"data", "numbers", "checkpoint", "config", "output", "folder"}
    assert len(CASES) >= 200 and len({c.id for c in CASES}) == len(CASES)
    assert all(n in BUILDERS or n in ("d", "ro", "full") for c in CASES for n in c.names)


@pytest.mark.parametrize("bad", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(bad, tmp_path, monkeypatch, capsys, mounts, request):
    places = {"d": str(tmp_path)}
    needs_mount = {"ro", "full"} & set(bad.names)
    if needs_mount:
        if isinstance(mounts, str):
            pytest.skip(mounts)
        places |= {k: str(mounts[k]) for k in needs_mount}
    for name in dict.fromkeys(bad.names):
        if name in BUILDERS:
            build = BUILDERS[name]
            made = build(tmp_path, request.getfixturevalue("study_template")) if getattr(build, "needs_template", False) \
                else build(tmp_path)
            places[name] = str(made)
    argv = [a.format(**places) for a in bad.argv]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # nothing there: LPIPS stays n/a
    watched = [tmp_path, *(Path(places[k]) for k in needs_mount)]
    before = snapshot(*watched)
    monkeypatch.setattr(sys, "argv", ["fedleak", *argv])
    with warnings.catch_warnings(record=True) as caught:  # the console would print each as more lines
        warnings.simplefilter("always")
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("fedleak: error: "), err[-2000:]
    assert "Traceback" not in out + err and len(lines[0]) <= MAX_LINE
    assert not caught, f"a warning would print on stderr too: {caught[0].category.__name__}: {caught[0].message}"
    assert bad.expect.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / MARKER).exists(), "a hostile input ran a command"
    assert snapshot(*watched) == before, "the command left something behind"
