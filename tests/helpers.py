"""Test data built in code: photos drawn with Pillow, a tiny seeded ViT, a seeded fake embedder."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw

from vitsearch.model.features import EmbeddingBatch
from vitsearch.records import Label, ModelInfo

# Which backend `auto` picks depends on the CPU and on timing: every test that is not about
# the backend pins torch fp32 (tests about it ask for "auto" themselves).
PINNED_BACKEND = {"backend": "torch", "precision": "fp32"}

# Quality on trained weights: a local checkpoint, and the shared data beside the clone
# (1000 ImageNet photos, one per class, and WordNet). Without them those tests skip.
REAL_MODEL = os.environ.get("VITSEARCH_TEST_MODEL")
SHARED_DATA = Path(
    os.environ.get("VITSEARCH_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
IMAGENET_SAMPLE = SHARED_DATA / "imagenet-sample"
WORDNET = SHARED_DATA / "wordnet"
NO_REAL_MODEL = "set VITSEARCH_TEST_MODEL to a trained checkpoint (e.g. a saved ViT)"
NO_SAMPLE = f"no ImageNet sample at {IMAGENET_SAMPLE} (VITSEARCH_TEST_DATA names its parent)"

TINY_LABELS = {
    0: "tabby, tabby cat",
    1: "golden retriever",
    2: "pizza, pizza pie",
    3: "sports car, sport car",
    4: "red wine",
    5: "daisy",
}


def save_tiny_vit(
    directory: Path, seed: int = 0, with_head: bool = True, image_size: int = 32
) -> Path:
    """A randomly initialised (seeded) tiny ViT saved exactly as a real checkpoint is."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
    )
    model = (
        ViTForImageClassification(config)
        if with_head
        else ViTModel(config, add_pooling_layer=False)
    )
    model.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(
        directory
    )
    return directory


def draw_photo(
    path: Path,
    seed: int,
    size: tuple[int, int] = (96, 72),
    mode: str = "RGB",
    fmt: str | None = None,
    **save_args,
) -> Path:
    """A distinct picture per seed: a coloured background with a few shapes."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        x1, y1 = x0 + rng.randrange(5, size[0]), y0 + rng.randrange(5, size[1])
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **save_args)
    return path


def draw_album(folder: Path, count: int, start_seed: int = 0) -> list[Path]:
    return [draw_photo(folder / f"photo_{i:04d}.jpg", seed=start_seed + i) for i in range(count)]


class FakeEmbedder:
    """A seeded stand-in for the model boundary: deterministic vectors from the pixels.

    Similar pictures get similar vectors (a fixed random projection of a 8x8 thumbnail),
    so store and search behave as with a real model, in milliseconds.
    """

    def __init__(self, dim: int = 24, seed: int = 7, name: str = "fake-vit") -> None:
        rng = np.random.default_rng(seed)
        self._projection = rng.standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self.info = ModelInfo(
            name=name,
            fingerprint=f"fake:{seed}:{dim}",
            dim=dim,
            preprocessing={"size": {"height": 8, "width": 8}},
        )
        self.precision = "fp32"
        self.device = "cpu"
        self.input_size = (8, 8)
        self.decode_size = (16, 16)
        self.calls = 0
        self.images_embedded = 0

    def set_threads(self, threads: int) -> bool:
        return False  # no threads to set: numpy, in the caller's thread

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((8, 8), Image.BILINEAR)
        return (np.asarray(small, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)

    def embed(self, pixels: np.ndarray):
        self.calls += 1
        self.images_embedded += len(pixels)
        flat = pixels.reshape(len(pixels), -1) - pixels.reshape(len(pixels), -1).mean(
            1, keepdims=True
        )
        vectors = flat @ self._projection
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
        labels = [self._labels(v) for v in vectors]
        return EmbeddingBatch(vectors=vectors.astype(np.float32), labels=labels)

    def embed_images(self, images):
        return self.embed(np.stack([self.preprocess(image) for image in images]))

    def _labels(self, vector: np.ndarray) -> tuple[Label, ...]:
        scores = np.exp(vector[: len(TINY_LABELS)] * 4)
        scores /= scores.sum()
        order = np.argsort(-scores)[:5]
        return tuple(Label(TINY_LABELS[int(i)], float(scores[i])) for i in order)


def image_entries(
    vectors: np.ndarray,
    root_id: int,
    paths: list[str],
    *,
    labels=None,
    taken_at=None,
    hashes=None,
    sizes=None,
) -> list:
    """ImageEntry rows as the indexer writes them, for embeddings with known structure."""
    from vitsearch.records import ImageEntry

    return [
        ImageEntry(
            path=paths[i],
            root_id=root_id,
            size=1000 + i,
            mtime_ns=i,
            fingerprint=f"f{i}",
            content_hash=hashes[i] if hashes else f"{paths[i]}#hash",
            width=(sizes[i][0] if sizes else 64),
            height=(sizes[i][1] if sizes else 48),
            taken_at=taken_at[i] if taken_at is not None else None,
            vector=np.asarray(vectors[i], np.float32),
            labels=tuple(labels[i]) if labels else (),
        )
        for i in range(len(vectors))
    ]


def plant(
    home: Path,
    vectors: np.ndarray,
    *,
    labels=None,
    taken_at=None,
    paths=None,
    hashes=None,
    sizes=None,
    folder: str = "/photos",
    model: ModelInfo | None = None,
) -> list[int]:
    """Write embeddings with known structure through the store API, as the indexer would."""
    from vitsearch.store import open_library

    paths = paths or [f"{folder}/p{i:05d}.jpg" for i in range(len(vectors))]
    with open_library(home, write=True) as library:
        if library.model is None:
            library.adopt_model(
                model or ModelInfo("planted", "planted:1", vectors.shape[1]), "fp32"
            )
        root = library.root_id(folder)
        new = image_entries(
            vectors, root, paths, labels=labels, taken_at=taken_at, hashes=hashes, sizes=sizes
        )
        return library.write_batch(new, [])


def sphere_groups(sizes: list[int], dim: int = 24, spread: float = 0.15, seed: int = 0):
    """Well-separated groups on the unit sphere: (vectors, group of each vector)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, groups = [], []
    for g, size in enumerate(sizes):
        points = centres[g] + spread * rng.standard_normal((size, dim)) / np.sqrt(dim)
        vectors.append(points / np.linalg.norm(points, axis=1, keepdims=True))
        groups += [g] * size
    return np.concatenate(vectors).astype(np.float32), np.array(groups)


def adjusted_rand_index(truth: np.ndarray, found: np.ndarray) -> float:
    """ARI from the contingency table (Hubert & Arabie)."""
    from math import comb

    _, t = np.unique(truth, return_inverse=True)
    _, f = np.unique(found, return_inverse=True)
    table = np.zeros((t.max() + 1, f.max() + 1), dtype=np.int64)
    np.add.at(table, (t, f), 1)
    pairs = sum(comb(int(n), 2) for n in table.ravel())
    rows = sum(comb(int(n), 2) for n in table.sum(1))
    cols = sum(comb(int(n), 2) for n in table.sum(0))
    expected = rows * cols / comb(len(truth), 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (pairs - expected) / (top - expected)


def vitsearch(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """`vitsearch ARGS` as a user's shell runs it; with ``check``, a failure shows its output."""
    result = subprocess.run(
        [sys.executable, "-m", "vitsearch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"vitsearch {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = BENCHMARKS.parent / "scripts"


def script_module(name: str) -> ModuleType:
    """A maintainer's script of scripts/ (not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    """A script of benchmarks/ imported as a module; they import their shared helpers by
    bare name (``_photos``, ``_timing``...), as when run as scripts."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


class once:
    """One app call with the app's whole life around it, as one CLI command has:
    ``once(settings, write=True).index(folders)`` opens the app, indexes and closes it."""

    def __init__(self, settings, write: bool = False) -> None:
        self.settings = settings
        self.write = write

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            from vitsearch.app import open_app

            with open_app(self.settings, write=self.write) as app:
                return getattr(app, name)(*args, **kwargs)

        return call


def fake_model_loader(threads: int, model=None) -> FakeEmbedder:
    """What the app's loader is to a Ray actor, for the fake embedder: (threads, model) ->
    embedder (importable, so a Ray worker unpickles it by name)."""
    return FakeEmbedder()


class SlowFakeEmbedder(FakeEmbedder):
    """The fake embedder with a forward as slow as a real model's on a CPU: a job on it
    lasts long enough for a test to break it part way (same vectors as the fast one)."""

    forward_seconds = 0.25

    def embed(self, pixels: np.ndarray):
        time.sleep(self.forward_seconds)
        return super().embed(pixels)


def slow_model_loader(threads: int, model=None) -> SlowFakeEmbedder:
    """:func:`fake_model_loader` for :class:`SlowFakeEmbedder`."""
    return SlowFakeEmbedder()


class PoisonedFakeEmbedder(SlowFakeEmbedder):
    """A worker that dies (SIGKILL, as the kernel's OOM killer kills) on every batch holding
    an all-black photo: a batch no retry gets through."""

    def embed(self, pixels: np.ndarray):
        if (pixels.reshape(len(pixels), -1).max(1) < -0.9).any():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().embed(pixels)


def poisoned_model_loader(threads: int, model=None) -> PoisonedFakeEmbedder:
    """:func:`fake_model_loader` for :class:`PoisonedFakeEmbedder`."""
    return PoisonedFakeEmbedder()
