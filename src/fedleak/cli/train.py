"""``fedleak train`` (a target model to attack) and ``fedleak train-prior`` (ROG's learned priors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedleak.attacks.restoration_prior import RestorationPriorSettings, save_prior, train_prior_on
from fedleak.attacks.semantic_prior import SemanticPriorSettings, save_semantic_prior, train_semantic_prior_on
from fedleak.cli.common import MAX_SEED, _finite, console
from fedleak.config import parse_override
from fedleak.errors import ConfigError
from fedleak.models.checkpoint import save_checkpoint
from fedleak.store import check_file_out
from fedleak.training import TrainSettings, train_target

# Options both commands take, with the same meaning.
RootOption = Annotated[str | None, typer.Option(help="data folder")]
ImageSizeOption = Annotated[int | None, typer.Option(help="resize images to this side")]
ChannelsOption = Annotated[int | None, typer.Option(help="convert images to 1 or 3 channels")]
EpochsOption = Annotated[int, typer.Option(help="training epochs")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", help="minibatch size")]
LimitOption = Annotated[int | None, typer.Option(help="train on at most N images")]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")]


def train(
    model: Annotated[str, typer.Option(help="architecture, or package.module:factory")],
    dataset: Annotated[str, typer.Option(help="samples | mnist | cifar10 | cifar100 | folder | text | hf-disk | pii")],
    root: RootOption = None,
    epochs: EpochsOption = 10,
    lr: Annotated[float | None, typer.Option(
        help="initial learning rate, cosine schedule (default: 0.05 for images, SGD; 1e-3 for text, AdamW)",
        callback=_finite)] = None,
    batch_size: BatchSizeOption = 64,
    width: Annotated[float | None, typer.Option(help="model width multiplier (default: the model's own, 1)",
                                                callback=_finite)] = None,
    option: Annotated[list[str] | None, typer.Option(help="model option key=value, e.g. norm=group")] = None,
    data_option: Annotated[list[str] | None, typer.Option(
        help="dataset option key=value, e.g. n=64, tokenizer=bpe, seq_len=32 (recorded in the checkpoint)")] = None,
    image_size: ImageSizeOption = None,
    channels: ChannelsOption = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="split a test set off the training data (default: the dataset's test split, or 0.2)",
                                   callback=_finite)
    ] = None,
    limit: LimitOption = None,
    augment: Annotated[bool, typer.Option(help="random flips and crops")] = False,
    seed: Annotated[int, typer.Option(help="seed for initialisation, splits and order", min=0, max=MAX_SEED)] = 0,
    out: Annotated[Path | None, typer.Option(help="checkpoint file (.safetensors)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing checkpoint")] = False,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a target model and save it as a checkpoint for `fedleak attack --checkpoint`."""
    path = check_file_out(out or Path("checkpoints") / f"{model.replace(':', '_')}-{dataset}.safetensors",
                          force, "checkpoint", ".safetensors")
    options = {".".join(parts): value for parts, value in (parse_override(o) for o in option or [])}
    data_options = {".".join(parts): value for parts, value in (parse_override(o) for o in data_option or [])}
    result = train_target(model, dataset, root, width, options, image_size, channels, test_fraction, limit,
                          TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, augment=augment, seed=seed,
                                        device=device),
                          progress=not quiet, data_options=data_options)
    save_checkpoint(path, result.model, result.info)
    t = result.info.training
    held = {"test loss": f"{t['test_loss']:.3f}", "perplexity": f"{t['perplexity']:.1f}"} if "test_loss" in t else {}
    row = {"model": model, "dataset": result.info.dataset, "train images": str(t["train_images"]),
           "test accuracy": f"{result.info.test_accuracy:.3f}", **held, "seconds": f"{result.history.seconds:.0f}"}
    table = Table(title=f"fedleak train → {path}")
    for key in row:
        table.add_column(key, justify="right")
    table.add_row(*row.values())
    console.print(table)


def train_prior(
    dataset: Annotated[str, typer.Option(help="public images: samples | mnist | cifar10 | cifar100 | folder")],
    root: RootOption = None,
    kind: Annotated[str, typer.Option(help="restoration (denoising + super-resolution) | semantic (a "
                                           "class-conditional generator: ROG's semantic-level variant)")] = "restoration",
    split: Annotated[str, typer.Option(help="split to train on (keep the attacked split out)")] = "train",
    scale: Annotated[int, typer.Option(help="ROG downsampling factor the prior undoes")] = 2,
    image_size: ImageSizeOption = None,
    channels: ChannelsOption = None,
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 64,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default: 1e-3 restoration, cosine schedule; "
                                                  "2e-4 semantic)", callback=_finite)] = None,
    noise: Annotated[float, typer.Option(help="largest σ of the Gaussian degradation", callback=_finite)] = 0.1,
    width: Annotated[int, typer.Option(help="channels of the network")] = 32,
    depth: Annotated[int, typer.Option(help="convolutions of the network (restoration)")] = 6,
    adversarial: Annotated[float, typer.Option(help="weight of the adversarial loss (semantic; 0: L1 only)",
                                               callback=_finite)] = 0.01,
    limit: LimitOption = None,
    seed: Annotated[int, typer.Option(help="seed for splits, degradations and initialisation", min=0, max=MAX_SEED)] = 0,
    out: Annotated[Path | None, typer.Option(help="prior file (.safetensors)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Train one of ROG's learned priors on public images, for `attack --prior`: the restoration
    network, or (--kind semantic) the class-conditional generator of its semantic-level variant."""
    if kind not in ("restoration", "semantic"):
        raise ConfigError(f"--kind must be restoration or semantic, got {kind!r}")
    suffix = "" if kind == "restoration" else "-semantic"
    path = check_file_out(out or Path("checkpoints") / f"prior-{dataset}-x{scale}{suffix}.safetensors", force,
                          "prior", ".safetensors")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    if kind == "semantic":
        semantic = SemanticPriorSettings(scale=scale, width=width, noise=noise, adversarial=adversarial,
                                         epochs=epochs, batch_size=batch_size, lr=lr or 2e-4, seed=seed,
                                         device=device)
        gen, sinfo = train_semantic_prior_on(dataset, root, split, image_size, channels, limit, semantic,
                                             progress=not quiet)
        save_semantic_prior(path, gen, sinfo)
        name, images, validation, seconds = sinfo.dataset, sinfo.images, sinfo.validation, sinfo.seconds
    else:
        settings = RestorationPriorSettings(scale=scale, width=width, depth=depth, noise=noise, epochs=epochs,
                                            batch_size=batch_size, lr=lr or 1e-3, seed=seed, device=device)
        net, info = train_prior_on(dataset, root, split, image_size, channels, limit, settings, progress=not quiet)
        save_prior(path, net, info)
        name, images, validation, seconds = info.dataset, info.images, info.validation, info.seconds
    table = Table(title=f"fedleak train-prior ({kind}) → {path}")
    for key in ("dataset", "images", "scale", "bicubic PSNR", "prior PSNR", "seconds"):
        table.add_column(key, justify="right")
    table.add_row(name, str(images), str(scale), f"{validation['bicubic_psnr']:.2f}",
                  f"{validation['prior_psnr']:.2f}", f"{seconds:.0f}")
    console.print(table)
