"""Fine-tuning a ViT on labelled folders: the last encoder layers and a new head, the rest frozen.

``DIR`` holds one sub-folder per label with example photos, the layout vitsearch already reads.
The result is a normal Hugging Face checkpoint (safetensors, ``config.json`` with the new
``id2label``, the base's image-processor config), so ``vitsearch index --model OUT`` and
``transformers`` load it as they load any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from PIL import Image, ImageEnhance, ImageOps
from tqdm import tqdm

from vitsearch.errors import (
    ConfigError,
    ModelNotAvailableError,
    VitsearchError,
)
from vitsearch.machine.fileio import replacing
from vitsearch.machine.hardware import choose_precision
from vitsearch.model.checkpoint import (
    check_weights,
    checked_config,
    checkpoint_fingerprint,
    load_processor,
    resolve_checkpoint,
)
from vitsearch.model.pixels import input_size
from vitsearch.model.pytorch.devices import choose_device
from vitsearch.model.pytorch.embedder import DTYPES
from vitsearch.photos.decode import read_or_skip
from vitsearch.photos.labelled import labelled_photos

log = logging.getLogger(__name__)

STATE_FILE = ".finetune-state.pt"
STATE_VERSION = 1
# "Slight" augmentation: the photos' content must stay recognisable.
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.1

Item = tuple[str, int]  # (photo path, class index)
# what --precision takes, as vitsearch.config.PRECISIONS (a test keeps them equal): model/
# is handed its settings, it does not read them
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DECODE_WORKERS = 2


class FinetuneDataError(VitsearchError, ValueError):
    """The training folder cannot be used for fine-tuning (too few classes or photos)."""


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune. Invalid values raise :class:`~vitsearch.errors.ConfigError`.

    Attributes:
        epochs: Passes over the training photos (a resumed run stops at this epoch too).
        batch_size: Photos per forward pass.
        grad_accum: Forward passes whose gradients add up to one optimizer step.
        lr: Peak learning rate, reached after the warmup.
        warmup_fraction: Share of all optimizer steps spent raising the rate linearly from ~0.
        weight_decay: AdamW decay on weight matrices (never on biases or norms).
        freeze_layers: How many of the *last* encoder layers are trained; the embeddings and
            the earlier layers stay frozen. The new head is always trained. 0 = linear probe.
        val_fraction: Share of each class held out for validation (at least one photo each).
        patience: Stop after this many epochs without a better validation accuracy.
        seed: Seeds the split, the shuffling, the augmentation and the new head.
        precision: ``auto`` follows the ``precision`` given to :func:`finetune` (bf16 autocast
            on CPUs with bf16 hardware, fp16 on CUDA); ``fp32``, ``bf16`` or ``fp16`` force it.
            Weights stay fp32.
    """

    epochs: int = 10
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.05
    freeze_layers: int = 2
    val_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.freeze_layers < 0:
            raise ConfigError("freeze-layers (the last N layers to train) must be 0 or more")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.warmup_fraction < 1):
            raise ConfigError("lr must be > 0, weight-decay >= 0 and warmup-fraction in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val-fraction must be between 0 and 1, not {self.val_fraction}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's training photos (augmented)
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run did; ``history`` includes epochs done before a resume."""

    out_dir: Path
    classes: tuple[str, ...]
    history: tuple[EpochStats, ...]
    best_epoch: int  # the epoch whose weights were saved
    resumed_from: int  # epochs already done when this call started (0: a fresh run)
    stopped_early: bool
    train_size: int
    val_size: int

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]

    def line(self) -> str:
        """One line for the CLI: the kept epoch, its validation scores, where it went."""
        best = self.best
        notes = [f"resumed after epoch {self.resumed_from}"] if self.resumed_from else []
        notes += ["stopped early"] if self.stopped_early else []
        return (
            f"epoch {best.epoch} of {len(self.history)} kept: validation accuracy "
            f"{best.val_accuracy:.3f}, loss {best.val_loss:.4f} ({self.val_size} photos, "
            f"{self.train_size} trained on{'; ' if notes else ''}{'; '.join(notes)}); "
            f"saved to {self.out_dir}"
        )


@dataclass(frozen=True)
class Dataset:
    classes: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]


def finetune(
    base: str,
    data_dir: Path,
    out_dir: Path,
    options: FinetuneOptions | None = None,
    *,
    threads: int,
    device: str = "auto",
    precision: str = "auto",
    decode_workers: int = DECODE_WORKERS,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune checkpoint ``base`` on the labelled sub-folders of ``data_dir``.

    Each epoch ends with a resumable state in ``out_dir/.finetune-state.pt``; calling again
    with the same data and options continues from the next epoch (``epochs`` may be raised).
    The best epoch (validation accuracy, then loss) is saved to ``out_dir`` as a checkpoint.

    Args:
        base: Hub id or local checkpoint directory, resolved like ``--model``.
        data_dir: One sub-folder per label, holding that label's example photos.
        out_dir: Where the checkpoint (and the resume state) go; not the base's directory.
        options: Training options; the defaults when None.
        threads: Torch intra-op threads.
        device: ``auto`` (cuda > mps > cpu) or the device to train on.
        precision: The model precision asked for (``--precision``); ``options.precision``
            other than ``auto`` overrides it for training.
        decode_workers: Threads decoding photos.
        progress: Show a progress bar with the loss and validation accuracy.

    Raises:
        FinetuneDataError: Fewer than 2 classes, or a class with fewer than 2 readable photos.
        ModelNotAvailableError: The base cannot be found or loaded.
        VitsearchError: ``out_dir`` holds the state of a different run.
    """
    options = options or FinetuneOptions()
    _quiet_transformers(threads)
    directory = resolve_checkpoint(base)
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(directory, out_dir)
    processor = _load_processor(directory, base)
    with ThreadPoolExecutor(max_workers=decode_workers) as pool:
        data = collect_dataset(Path(data_dir), options, _decode_size(processor), pool)
        model = _load_model(directory, base, data.classes, options)
        device = choose_device(device)
        precision = _precision(options, precision, device)
        trainer = Trainer(model.to(device), processor, data, options, device, precision, pool)
        key = _run_key(directory, data, options)
        history, best_epoch, stopped = _train(trainer, out_dir, key, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_best(out_dir)
    log.info("saved the epoch %d model to %s (%s)", best_epoch, out_dir, precision)
    return FinetuneResult(
        out_dir=out_dir,
        classes=data.classes,
        history=tuple(history),
        best_epoch=best_epoch,
        resumed_from=trainer.resumed_from,
        stopped_early=stopped,
        train_size=len(data.train),
        val_size=len(data.val),
    )


def _train(
    trainer: Trainer, out_dir: Path, key: str, progress: bool
) -> tuple[list[EpochStats], int, bool]:
    """The epoch loop: train, validate, keep the best weights, save the state, stop early."""
    state_path = out_dir / STATE_FILE
    history, best_epoch = trainer.resume(state_path, key)
    options = trainer.options
    total = (options.epochs - len(history)) * trainer.batches_per_epoch
    with tqdm(total=max(total, 0), unit="batch", disable=not progress) as bar:
        for epoch in range(len(history) + 1, options.epochs + 1):
            if best_epoch and epoch - 1 - best_epoch >= options.patience:
                break
            bar.set_description(f"epoch {epoch}/{options.epochs}")
            train_loss = trainer.train_epoch(epoch, bar)
            val_loss, val_accuracy = trainer.evaluate()
            history.append(EpochStats(epoch, train_loss, val_loss, val_accuracy))
            if _better(history[-1], history[best_epoch - 1] if best_epoch else None):
                best_epoch = epoch
                trainer.keep_best()
            bar.set_postfix_str(trainer.progress_text(train_loss))
            log.info(
                "epoch %d: train loss %.4f, val loss %.4f, val accuracy %.3f",
                *dataclasses.astuple(history[-1]),
            )
            trainer.save_state(state_path, key, history, best_epoch)
    stopped = len(history) < options.epochs
    if stopped:
        log.info("stopped early: no better validation accuracy since epoch %d", best_epoch)
    return history, best_epoch, stopped


def _better(stats: EpochStats, best: EpochStats | None) -> bool:
    # Accuracy first; on a small validation set it ties often, so the lower loss breaks ties.
    return best is None or (stats.val_accuracy, -stats.val_loss) > (
        best.val_accuracy,
        -best.val_loss,
    )


# --- data ---------------------------------------------------------------------------------


def collect_dataset(
    data_dir: Path, options: FinetuneOptions, draft_size: tuple[int, int], pool: ThreadPoolExecutor
) -> Dataset:
    """The readable photos of each class folder, split per class into train and validation."""
    folders = labelled_photos(data_dir)
    if len(folders) < 2:
        found = ", ".join(folders) or "none"
        raise FinetuneDataError(
            f"fine-tuning needs at least 2 classes, one sub-folder of {data_dir} per label "
            f"with its example photos; found {len(folders)} ({found})"
        )
    photos = {name: _readable(paths, draft_size, pool) for name, paths in folders.items()}
    for name, paths in photos.items():
        if len(paths) < 2:
            raise FinetuneDataError(
                f"class {name!r} ({data_dir / name}) has {len(paths)} readable photo(s); each "
                "class needs at least 2 (one to train on, one to validate)"
            )
    return split_dataset(photos, options.val_fraction, options.seed)


def split_dataset(photos: dict[str, list[str]], val_fraction: float, seed: int) -> Dataset:
    """A seeded split, stratified: each class keeps at least one photo on each side."""
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    classes = tuple(sorted(photos))
    for label, name in enumerate(classes):
        paths = sorted(photos[name])
        rng.shuffle(paths)
        n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
        val += [(path, label) for path in paths[:n_val]]
        train += [(path, label) for path in paths[n_val:]]
    return Dataset(classes, tuple(train), tuple(val))


def _readable(paths: list[str], draft_size: tuple[int, int], pool: ThreadPoolExecutor) -> list[str]:
    # Decoded once to drop unreadable photos before the split; the pixels are not kept,
    # so a large folder never sits in memory (each epoch decodes again).
    readable = pool.map(lambda path: _decode(path, draft_size) is not None, paths)
    return [path for path, ok in zip(paths, readable, strict=True) if ok]


def _decode(path: str, draft_size: tuple[int, int]) -> Image.Image | None:
    """The photo exactly as the indexer sees it, or None (logged) when it cannot be read."""
    photo = read_or_skip(path, draft_size)
    return None if photo is None else photo.image


@dataclass(frozen=True)
class Augment:
    """One training photo's random changes, drawn up front so threads cannot reorder them."""

    box: tuple[float, float, float, float]  # crop as fractions of width and height
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def draw_augment(rng: random.Random) -> Augment:
    """Random resized crop (area 60-100%, aspect ±33%), a coin-flip mirror, ±10% colour."""
    area = rng.uniform(*CROP_SCALE)
    ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    width, height = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))
    left, top = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    return Augment(
        box=(left, top, left + width, top + height),
        flip=rng.random() < 0.5,
        brightness=rng.uniform(1 - JITTER, 1 + JITTER),
        contrast=rng.uniform(1 - JITTER, 1 + JITTER),
        saturation=rng.uniform(1 - JITTER, 1 + JITTER),
    )


def augment(image: Image.Image, change: Augment, size: tuple[int, int]) -> Image.Image:
    """Apply ``change``; the crop is resized straight to the model's input ``size``."""
    w, h = image.size
    x0, y0, x1, y1 = change.box
    out = image.resize(size, Image.Resampling.BICUBIC, box=(x0 * w, y0 * h, x1 * w, y1 * h))
    if change.flip:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(change.brightness)
    out = ImageEnhance.Contrast(out).enhance(change.contrast)
    return ImageEnhance.Color(out).enhance(change.saturation)


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- model ----------------------------------------------------------------------------------


def _quiet_transformers(threads: int) -> None:
    # Same as load_embedder: the "newly initialized head" warning is expected here.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)


def _check_out_dir(base_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == base_dir.resolve():
        raise ConfigError(f"--out {out_dir} is the base checkpoint itself; choose another folder")


def _load_processor(directory: Path, name: str) -> transformers.BaseImageProcessor:
    """The base's image processor, once the base passed the loader's rules (safetensors
    weights, an architecture vitsearch embeds with)."""
    check_weights(directory, name)
    checked_config(directory, name)
    return load_processor(directory, name)


def _load_model(directory: Path, name: str, classes: Sequence[str], options: FinetuneOptions):
    """The base with a fresh, seeded head for ``classes`` and only the chosen layers trainable."""
    id2label = dict(enumerate(classes))
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            directory,
            num_labels=len(classes),
            id2label=id2label,
            label2id={label: i for i, label in id2label.items()},
            ignore_mismatched_sizes=True,
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot load checkpoint {name}: {exc}") from exc
    _reset_head(model, options.seed)
    _freeze(model, options.freeze_layers)
    return model.float()  # a half-precision checkpoint trains in fp32; autocast does the rest


def _head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [child for child in model.children() if child is not model.base_model]


def _reset_head(model, seed: int) -> None:
    # A head with the same number of outputs would load unchanged, mapping old labels onto
    # the new ones by accident; a new task gets a new head, the same for every class count.
    torch.manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    for head in _head_modules(model):
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=std)
                torch.nn.init.zeros_(module.bias)


def encoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks, found by shape: transformers 4 names them
    ``encoder.layer``, 5 ``layers``."""
    count = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ModelNotAvailableError(f"cannot find the {count} encoder layers of this checkpoint")


def _freeze(model, train_layers: int) -> None:
    """Train the head, the last ``train_layers`` blocks and (with any block) the final norm."""
    layers = encoder_layers(model)
    if train_layers > len(layers):
        raise ConfigError(
            f"freeze-layers {train_layers}: the model has only {len(layers)} encoder layers"
        )
    model.requires_grad_(False)
    for head in _head_modules(model):
        head.requires_grad_(True)
    if train_layers == 0:
        return  # a linear probe: the embedding stays exactly the base's
    for layer in list(layers)[len(layers) - train_layers :]:
        layer.requires_grad_(True)
    base = model.base_model
    for child in base.children():  # what follows the blocks: the final layer norm, a pooler
        if child is not getattr(base, "embeddings", None) and not _contains(child, layers):
            child.requires_grad_(True)


def _contains(module: torch.nn.Module, part: torch.nn.Module) -> bool:
    return any(m is part for m in module.modules())


def _decode_size(processor) -> tuple[int, int]:
    width, height = _input_size(processor)
    # twice the input, unlike the indexer: random crops are then resized up to the input
    return 2 * width, 2 * height


def _input_size(processor) -> tuple[int, int]:
    return input_size(dict(processor.to_dict().get("size") or {}))


def _precision(options: FinetuneOptions, asked: str, device: str) -> str:
    if options.precision != "auto":
        return options.precision
    return choose_precision(asked, device)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then a cosine down towards 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- training -------------------------------------------------------------------------------


class Trainer:
    """One model's optimizer, schedule and data: an epoch of training, a validation pass."""

    def __init__(
        self,
        model,
        processor,
        data: Dataset,
        options: FinetuneOptions,
        device: str,
        precision: str,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.model, self.processor, self.data, self.options = model, processor, data, options
        self.device, self.precision, self._pool = device, precision, pool
        self._input_size = _input_size(processor)
        self._draft_size = _decode_size(processor)
        self.batches_per_epoch = math.ceil(len(data.train) / options.batch_size)
        self.optimizer = torch.optim.AdamW(_param_groups(model, options), lr=options.lr)
        self._total_steps = options.epochs * math.ceil(self.batches_per_epoch / options.grad_accum)
        self._warmup = math.ceil(options.warmup_fraction * self._total_steps)
        self._lr_factor = functools.partial(lr_factor, warmup=self._warmup, total=self._total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self._scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
        self._best = self._trainable_weights()
        self.resumed_from = 0
        self.val_accuracy: float | None = None  # the last validation, for the progress bar

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=DTYPES[self.precision])

    def train_epoch(self, epoch: int, bar: tqdm) -> float:
        """One pass over the shuffled, augmented training photos; the mean loss."""
        rng = random.Random(self.options.seed * 1_000_003 + epoch)
        torch.manual_seed(self.options.seed * 1_000_003 + epoch)  # dropout, if the model has any
        order = list(self.data.train)
        rng.shuffle(order)
        batches = list(_chunks(order, self.options.batch_size))
        self.model.train()
        loss_sum, seen = 0.0, 0
        for start in range(0, len(batches), self.options.grad_accum):
            group = batches[start : start + self.options.grad_accum]
            group_size = sum(len(batch) for batch in group)
            for batch in group:
                loss, count = self._backward(batch, rng, group_size)
                loss_sum, seen = loss_sum + loss * count, seen + count
                bar.update(1)
                bar.set_postfix_str(self.progress_text(loss_sum / max(seen, 1)), refresh=False)
            self._step()
        return loss_sum / max(seen, 1)

    def progress_text(self, loss: float) -> str:
        accuracy = "-" if self.val_accuracy is None else f"{self.val_accuracy:.3f}"
        return f"loss={loss:.4f}, val_acc={accuracy}"

    def _backward(self, batch: Sequence[Item], rng: random.Random, group_size: int):
        """Forward and backward one micro-batch, its gradient weighted by its share of the step."""
        changes = [draw_augment(rng) for _ in batch]
        pixels, labels = self._load(batch, changes)
        if pixels is None:
            return 0.0, 0
        with self._autocast():
            logits = self.model(pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        self._scaler.scale(loss * (len(labels) / group_size)).backward()
        return float(loss.detach()), len(labels)

    def _step(self) -> None:
        self._scaler.step(self.optimizer)
        self._scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the validation photos, unaugmented."""
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in _chunks(self.data.val, self.options.batch_size):
            pixels, labels = self._load(batch, None)
            if pixels is None:
                continue
            with self._autocast():
                logits = self.model(pixel_values=pixels).logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            seen += len(labels)
        self.val_accuracy = correct / max(seen, 1)
        return loss_sum / max(seen, 1), self.val_accuracy

    def _load(self, batch: Sequence[Item], changes: Sequence[Augment | None] | None):
        """Decode (in threads), augment when training, preprocess like the checkpoint does."""
        changes = changes or [None] * len(batch)
        images = list(self._pool.map(self._prepare, [path for path, _ in batch], changes))
        pairs = zip(images, batch, strict=True)
        kept = [(image, label) for image, (_, label) in pairs if image is not None]
        labels = torch.tensor([label for _, label in kept], dtype=torch.long, device=self.device)
        if not kept:
            return None, labels
        pixels = self.processor(images=[image for image, _ in kept], return_tensors="pt")
        return pixels["pixel_values"].to(self.device), labels

    def _prepare(self, path: str, change: Augment | None) -> Image.Image | None:
        # A photo that became unreadable since the scan is skipped, never the whole run.
        image = _decode(path, self._draft_size)
        if image is None or change is None:
            return image
        return augment(image, change, self._input_size)

    def _trainable_weights(self) -> dict[str, torch.Tensor]:
        return {
            name: param.detach().cpu().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }

    def _set_trainable_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)

    def keep_best(self) -> None:
        self._best = self._trainable_weights()

    def save_best(self, out_dir: Path) -> None:
        """The best epoch's weights as a standard checkpoint, with the base's preprocessing."""
        self._set_trainable_weights(self._best)
        # safetensors is the default of save_pretrained (transformers 5 has no other format).
        self.model.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)

    def save_state(self, path: Path, key: str, history: list[EpochStats], best_epoch: int) -> None:
        """Everything needed to continue after this epoch. Frozen weights are the base's, so
        only the trainable ones are kept; written atomically, so a kill leaves the last one."""
        state = {
            "version": STATE_VERSION,
            "key": key,
            "history": [dataclasses.asdict(stats) for stats in history],
            "best_epoch": best_epoch,
            "weights": self._trainable_weights(),
            "best_weights": self._best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        with replacing(path) as partial:
            torch.save(state, partial)

    def resume(self, path: Path, key: str) -> tuple[list[EpochStats], int]:
        """(history, best epoch) from a saved state of this same run; empty without one."""
        if not path.exists():
            return [], 0
        state = _read_state(path)
        if state.get("version") != STATE_VERSION or state.get("key") != key:
            raise VitsearchError(
                f"{path} holds a fine-tuning run with other data, base model or options; "
                "delete it to start over, or choose another --out folder"
            )
        self._set_trainable_weights(state["weights"])
        self._best = state["best_weights"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule's length follows ``epochs``, which a resumed run may raise: recompute
        # the rate for the step we are at instead of trusting the saved one.
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self._lr_factor(self.scheduler.last_epoch)
        history = [EpochStats(**stats) for stats in state["history"]]
        self.resumed_from = len(history)
        log.info("resuming %s after epoch %d", path.parent, len(history))
        return history, int(state["best_epoch"])


def _read_state(path: Path) -> dict:
    try:
        # Our own file, but still no pickle: tensors, numbers, strings, lists and dicts only.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: many error kinds, one fix
        raise VitsearchError(f"cannot read {path} ({exc}); delete it to start over") from exc


def _param_groups(model, options: FinetuneOptions) -> list[dict]:
    """Trainable parameters only; weight decay on matrices, never on biases or norms."""
    trainable = [param for param in model.parameters() if param.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": options.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def _run_key(directory: Path, data: Dataset, options: FinetuneOptions) -> str:
    """What a resumed run must share with the saved one. ``epochs`` and ``patience`` may
    change (to train longer), and so may ``precision`` (weights are fp32 either way)."""
    fixed = dataclasses.replace(options, epochs=1, patience=1, precision="auto")
    identity = {
        "base": checkpoint_fingerprint(directory),
        "classes": data.classes,
        "train": data.train,
        "val": data.val,
        "options": dataclasses.asdict(fixed),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
