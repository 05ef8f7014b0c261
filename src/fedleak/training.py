"""Training target models: one loop (a cosine schedule over minibatches of
``F.cross_entropy(model(inputs), targets)``) with what differs per modality in a :class:`Recipe`
(:data:`RECIPES`, keyed by the dataset's ``modality``):

* ``image``: SGD with momentum (default lr 0.05), optional flip/crop augmentation, inputs normalised
  with the dataset's mean and std; ``test_accuracy`` is top-1 classification accuracy.
* ``text``: AdamW (default lr 1e-3) on token ids B×T (:mod:`fedleak.models.text`). A language model's
  targets are :func:`~fedleak.models.text.lm_targets` (the next token; padding not scored): its
  ``test_accuracy`` is the held-out next-token top-1 accuracy over real tokens, and the checkpoint's
  ``training`` also records the held-out mean next-token cross-entropy ``test_loss`` (nats per token)
  and ``perplexity`` = exp(test_loss). A classifier's ``test_accuracy`` is top-1 accuracy.

Datasets without a separate test split (the MNIST test set alone, ORL) are split into train and test
by a seeded fraction (text corpora are split by their loader). The result is a checkpoint with the
test accuracy in its metadata.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedleak.data import ImageDataset, load_dataset
from fedleak.data.normalization import normalize
from fedleak.device import device_name, device_of, resolve_device
from fedleak.errors import ConfigError, DataError
from fedleak.models import CARDS, create_model
from fedleak.models.checkpoint import CheckpointInfo
from fedleak.models.text import IGNORE, CausalLM, TextModel, lm_targets
from fedleak.registry import Registry


@dataclass
class TrainSettings:
    epochs: int = 10
    lr: float | None = None  # None: the modality's default (:attr:`Recipe.lr`), recorded resolved
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: bool = False
    seed: int = 0
    device: str = "cpu"  # where to train: a ``device`` setting (auto | cpu | cuda[:N] | mps), resolved when set

    def __post_init__(self) -> None:
        self.device = device_name(resolve_device(self.device))  # recorded resolved, in the checkpoint too
        if self.epochs < 1 or self.batch_size < 1 or (self.lr is not None and not self.lr > 0):
            raise ConfigError("training needs epochs ≥ 1, batch size ≥ 1 and a positive lr")


@dataclass
class History:
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)  # held-out cross-entropy where the recipe measures it
    seconds: float = 0.0


@dataclass(frozen=True)
class Score:
    """A held-out evaluation: top-1 ``accuracy`` and, where measured, the mean cross-entropy ``loss``."""

    accuracy: float
    loss: float | None = None


def materialize(dataset: ImageDataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    """Decode the chosen images once into tensors (training revisits them every epoch)."""
    if not indices:
        raise ConfigError(f"no images selected from {dataset.name}")
    return dataset.images(indices), dataset.label_of(indices)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (train, test) split of ``range(n)`` with ``fraction`` of the items in test."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the test fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu").tolist()  # host-side
    cut = max(1, int(round(n * fraction)))
    return sorted(order[cut:]), sorted(order[:cut])


def augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random horizontal flips and random crops after zero padding (per image), drawn with
    ``generator`` on its device and cut by one gather there (no per-image loop, no host read)."""
    b, c, h, w = x.shape
    device = generator.device
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    rows = (dy.view(b, 1) + torch.arange(h, device=device)).view(b, 1, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=device)).view(b, 1, 1, w)
    return padded[torch.arange(b, device=device).view(b, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1),
                  rows, cols]


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, mean, std, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(normalize(images[start : start + batch_size], mean, std))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


Data = tuple[Tensor, Tensor]  # inputs and targets of the chosen examples


@dataclass(frozen=True)
class Recipe:
    """How one modality's target model is trained (:data:`RECIPES`):

    - ``build(name, dataset, width, options, seed)`` → the model, and the builder options a
      checkpoint records to rebuild it (the given ones plus what the data implied);
    - ``data(dataset, indices, model)`` → (inputs, targets) of those examples;
    - ``feed(x, dataset, settings, generator)`` → what the model takes for a training batch;
    - ``score(model, inputs, targets, dataset)`` → a held-out :class:`Score`;
    - ``optimizer(parameters, settings)`` with ``settings.lr`` set (``lr``: the default);
    - ``describe(dataset, model, data_options)`` → the modality's :class:`CheckpointInfo` fields.
    """

    build: Callable[[str, Any, float | None, dict[str, Any], int], tuple[nn.Module, dict[str, Any]]]
    data: Callable[[Any, list[int], nn.Module], Data]
    feed: Callable[[Tensor, Any, TrainSettings, torch.Generator], Tensor]
    score: Callable[[nn.Module, Tensor, Tensor, Any], Score]
    optimizer: Callable[[Iterable[nn.Parameter], TrainSettings], torch.optim.Optimizer]
    lr: float
    describe: Callable[[Any, nn.Module, dict[str, Any]], dict[str, Any]]


RECIPES: Registry[Recipe] = Registry("training modality")


def train(model: nn.Module, train_data: Data, test_data: Data, recipe: Recipe, dataset: Any,
          settings: TrainSettings, progress: bool = True) -> History:
    """Train ``model`` in place with ``recipe`` (``settings.lr`` set), on the device its parameters
    are on (data and random draws go there): minibatches of ``F.cross_entropy(model(feed(x)), y)``
    in a seeded order, a cosine schedule over all steps; a held-out :class:`Score` after each epoch."""
    assert settings.lr is not None  # train_target resolves it
    device = device_of(model)
    inputs, targets = (t.to(device) for t in train_data)
    test_data = (test_data[0].to(device), test_data[1].to(device))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    optimizer = recipe.optimizer(model.parameters(), settings)
    steps_per_epoch = math.ceil(len(inputs) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs * steps_per_epoch)
    history = History()
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator, device=device)
        total, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=not progress)
        for step in bar:
            batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            loss = F.cross_entropy(model(recipe.feed(inputs[batch], dataset, settings, generator)), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{total / seen:.3f}", refresh=False)
        history.train_loss.append(total / seen)
        score = recipe.score(model, *test_data, dataset)
        history.test_accuracy.append(score.accuracy)
        if score.loss is not None:
            history.test_loss.append(score.loss)
        if progress:
            held = f", test loss {score.loss:.3f}" if score.loss is not None else ""
            tqdm.write(f"epoch {epoch + 1}/{settings.epochs}: loss {total / seen:.3f}, "
                       f"test accuracy {score.accuracy:.3f}{held}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


# The image recipe: a zoo (or the user's) classifier on normalised [0, 1] images.

def _image_build(name: str, dataset: ImageDataset, width: float | None, options: dict[str, Any],
                 seed: int) -> tuple[nn.Module, dict[str, Any]]:
    if name in CARDS and CARDS.get(name).modality != "image":
        raise ConfigError(f"model {name} is a {CARDS.get(name).modality} model: dataset {dataset.name} holds images")
    c, h, w = dataset.image_shape
    return create_model(name, dataset.num_classes, c, (h, w), width=width, seed=seed, **options), dict(options)


def _image_feed(x: Tensor, dataset: ImageDataset, settings: TrainSettings, generator: torch.Generator) -> Tensor:
    return normalize(augment(x, generator) if settings.augment else x, dataset.mean, dataset.std)


def _image_score(model: nn.Module, images: Tensor, labels: Tensor, dataset: ImageDataset) -> Score:
    return Score(accuracy(model, images, labels, dataset.mean, dataset.std))


def _sgd(parameters: Iterable[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=s.lr or 0.0, momentum=s.momentum, weight_decay=s.weight_decay)


def _image_describe(dataset: ImageDataset, model: nn.Module, data_options: dict[str, Any]) -> dict[str, Any]:
    c, h, w = dataset.image_shape
    return dict(in_channels=c, image_size=h if h == w else [h, w], mean=dataset.mean, std=dataset.std)


IMAGE = RECIPES.register("image")(Recipe(_image_build, lambda d, idx, m: materialize(d, idx), _image_feed,
                                         _image_score, _sgd, 0.05, _image_describe))


# The text recipe: a transformers LM or classifier on token ids (fedleak.models.text).

def _text_build(name: str, dataset: Any, width: float | None, options: dict[str, Any],
                seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model as a run builds it for the dataset (its tokenizer's vocabulary and pad id, the
    given options winning), refused where it is no text model or the data does not fit it."""
    tok = dataset.tokenizer
    if name in CARDS and CARDS.get(name).modality != "text":  # refused before its builder sees vocab_size
        raise ConfigError(f"model {name} is not a text model: dataset {dataset.name} holds text "
                          "(gpt2-tiny, bert-tiny, …; fedleak config models)")
    given = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, **options}
    model = create_model(name, dataset.num_classes, 1, dataset.seq_len, width=width, seed=seed, **given)
    if not isinstance(model, TextModel):
        raise ConfigError(f"model {name} is not a text model: dataset {dataset.name} holds text "
                          "(gpt2-tiny, bert-tiny, …; fedleak config models)")
    if dataset.seq_len > model.max_length:
        raise DataError(f"sequences of {dataset.seq_len} tokens are longer than the model's context of "
                        f"{model.max_length}: set the data option seq_len ≤ {model.max_length}")
    if tok.vocab_size > model.vocab_size:
        raise DataError(f"the tokenizer has {tok.vocab_size} tokens, the model's vocabulary only {model.vocab_size}")
    task = "lm" if isinstance(model, CausalLM) else "classify"
    return model, {**given, "vocab_size": model.vocab_size, "pad_id": model.pad_id, "max_length": model.max_length,
                   "task": task}


def _text_data(dataset: Any, indices: list[int], model: nn.Module) -> Data:
    """Token ids B×T and a language model's next tokens (:func:`lm_targets`) or a classifier's classes."""
    if not indices:
        raise ConfigError(f"no examples selected from {dataset.name}")
    tokens = dataset.tokens(indices)
    return tokens, lm_targets(tokens, dataset.tokenizer.pad_id) if isinstance(model, CausalLM) else dataset.label_of(indices)


@torch.no_grad()
def text_score(model: nn.Module, tokens: Tensor, targets: Tensor, dataset: Any = None, batch_size: int = 64) -> Score:
    """Top-1 accuracy and mean cross-entropy over every scored target: for a language model each
    real next token (targets −100 are skipped), for a classifier each sequence."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for start in range(0, len(tokens), batch_size):
        logits, y = model(tokens[start : start + batch_size]), targets[start : start + batch_size]
        scored = y != IGNORE
        loss += float(F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum"))
        correct += int(((logits.argmax(1) == y) & scored).sum())
        count += int(scored.sum())
    return Score(correct / max(1, count), loss / max(1, count))


def _adamw(parameters: Iterable[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW((p for p in parameters if p.requires_grad), lr=s.lr or 0.0,
                             weight_decay=s.weight_decay)


def tokenizer_facts(tokenizer: Any, seq_len: int) -> dict[str, Any]:
    """What a checkpoint records of a dataset's tokenizer: name, vocabulary size, pad/bos/eos ids, the
    sequence length, and ``sha256`` of its serialised ``tokenizers`` JSON (equal for equal tokenizers)."""
    digest = hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()
    return {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "seq_len": seq_len, "sha256": digest}


def _text_describe(dataset: Any, model: nn.Module, data_options: dict[str, Any]) -> dict[str, Any]:
    return dict(in_channels=1, image_size=dataset.seq_len, modality="text",
                data_options={**data_options, "seq_len": dataset.seq_len},
                tokenizer=tokenizer_facts(dataset.tokenizer, dataset.seq_len))


TEXT = RECIPES.register("text")(Recipe(_text_build, _text_data, lambda x, d, s, g: x, text_score, _adamw, 1e-3,
                                       _text_describe))


@dataclass
class TargetRun:
    info: CheckpointInfo
    history: History
    model: nn.Module


def _same(a: Any, b: Any) -> bool:
    return a.name == b.name and len(a) == len(b) and torch.equal(a.labels, b.labels)


def train_target(
    model_name: str,
    dataset: str,
    root: str | None = None,
    width: float | None = None,
    options: dict | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float | None = None,
    limit: int | None = None,
    settings: TrainSettings | None = None,
    progress: bool = True,
    data_options: dict[str, Any] | None = None,
) -> TargetRun:
    """Load the data (``data_options``: the loader's own options, e.g. a text corpus's ``n``,
    ``tokenizer``, ``seq_len``; splitting off a seeded test set where the dataset has none), build and
    train the model with the :class:`Recipe` of the dataset's ``modality``, and describe it for a
    checkpoint.

    ``width`` unset is the model's own default (1 for registered models). The checkpoint records the
    image size as an int for square images and ``[H, W]`` otherwise; a text model's ``image_size`` is
    its sequence length, its ``options`` what rebuilds it (vocab_size, pad_id, max_length, task), its
    ``data_options`` and ``tokenizer`` what reloads the same data (:func:`tokenizer_facts`)."""
    settings = settings or TrainSettings()
    kw: dict[str, Any] = dict(image_size=image_size, channels=channels, **(data_options or {}))
    test = load_dataset(dataset, root, split="test", **kw)
    try:
        train_set = load_dataset(dataset, root, split="train", **kw)
    except DataError:
        train_set = test  # e.g. only the MNIST test files are present
    recipe = RECIPES.get(getattr(train_set, "modality", "image"))
    if settings.lr is None:
        settings = replace(settings, lr=recipe.lr)
    if test_fraction is not None or _same(train_set, test):
        pool = test if train_set is test else train_set
        train_idx, test_idx = holdout_split(len(pool), test_fraction or 0.2, settings.seed)
        train_set = test = pool
    else:
        train_idx, test_idx = list(range(len(train_set))), list(range(len(test)))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        g = torch.Generator().manual_seed(settings.seed)
        pick = torch.randperm(len(train_idx), generator=g, device="cpu")[:limit].tolist()  # host-side indices
        train_idx = sorted(train_idx[i] for i in pick)
    model, recorded = recipe.build(model_name, train_set, width, dict(options or {}), settings.seed)
    train_data, test_data = recipe.data(train_set, train_idx, model), recipe.data(test, test_idx, model)
    model.to(settings.device)
    history = train(model, train_data, test_data, recipe, train_set, settings, progress)
    model.to("cpu")  # a checkpoint is written from host memory
    held = {"test_loss": round(history.test_loss[-1], 6),
            "perplexity": round(math.exp(min(history.test_loss[-1], 700.0)), 4)} if history.test_loss else {}
    info = CheckpointInfo(
        architecture=model_name, num_classes=train_set.num_classes, width=1.0 if width is None else width,
        options=recorded, dataset=train_set.name, classes=list(train_set.classes), epochs=settings.epochs,
        test_accuracy=history.test_accuracy[-1], seed=settings.seed,
        training={**vars(settings), "train_images": len(train_idx), "test_images": len(test_idx),
                  "seconds": round(history.seconds, 1), **held},
        **recipe.describe(train_set, model, dict(data_options or {})),
    )
    return TargetRun(info, history, model)
