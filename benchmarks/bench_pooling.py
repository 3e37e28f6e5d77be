"""CLS token vs mean-pooled patch tokens (vs both) for retrieval and duplicate finding.

Run: ``python benchmarks/bench_pooling.py PATH [--images N] [--model DIR] [--batch-size B]
[--threads T] [--layer L]``. PATH is a folder of photos (e.g. an ImageNet sample); they are
read in place, and their modified copies live in a temporary directory.

Each photo gets a few modified copies (downscaled, recompressed, cropped, brightened), the
kind a near-duplicate finder must catch. Every photo and copy is embedded once through the
library's own path (``load_settings`` -> ``app.load_model`` -> ``embed_files``) with
``pool=cls+mean``, whose two halves are exactly the ``cls`` and ``mean`` embeddings (checked
against those pools on the first batch). Then, per pooling:

- retrieval: each copy queries the originals (and, harder, the originals plus every other
  photo's copies); recall@1, recall@5 and mean reciprocal rank of its own original;
- duplicate pairs: every pair of images is a positive when both show the same photo; average
  precision, the best F1 over all thresholds, precision/recall at the app's near and burst
  thresholds, and the margin between the weakest positive and the strongest negative;
- semantic neighbours (photos named ``<wnid>_...``, as the ImageNet sample is): each original's
  10 nearest other originals, precision@10 of those related in WordNet (the package's
  ImageNet hierarchy). An ImageNet sample holds one photo per class, so the class itself cannot
  be the answer: "cousins" counts a neighbour whose class meets the photo's within two steps
  up from each (same parent or grandparent synset: a Labrador and a golden retriever under
  "retriever", a bus and a tram under "public transport"); "kind" counts a neighbour of the same
  broad kind (dog, bird, reptile, wheeled vehicle, clothing... see KINDS; photos of none of
  them are left out). Beside each: the precision of 10 random neighbours.

Photos are taken evenly across the folder's sorted names (ImageNet's are sorted by wnid, so the
first 200 would all be animals). Every pool is embedded with torch fp32, whatever the machine:
the comparison is of poolings, not backends.

Without ``--model`` the checkpoint is a *randomly initialised* ViT-B/16 (seeded), like
bench_index.py's: that shows what the architecture and the pooling do with untrained weights,
not what a trained model does. Pass ``--model DIR`` (a local checkpoint) for real weights.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _models import add_model_options, save_vit_b16
from _photos import pick_photos
from _timing import CpuMeter
from PIL import Image, ImageEnhance, ImageOps

from vitsearch import app
from vitsearch.config import POOLS, Settings, load_settings
from vitsearch.explore.duplicates import BURST_THRESHOLD, NEAR_THRESHOLD
from vitsearch.labels.hierarchy import Hierarchy, imagenet_hierarchy
from vitsearch.machine.hardware import cpu_name
from vitsearch.model.feature_files import embed_files

if TYPE_CHECKING:
    from vitsearch.model import Embedder  # torch: imported by the run, not by its tests

DEFAULT_IMAGES = 200
SPLIT_CHECK_COSINE = 0.999  # the halves of cls+mean vs the cls and mean pools themselves
BUSY_WARNING_CORES = 0.1
NEIGHBOURS = 10  # precision@10 of semantic neighbours
COUSIN_LEVELS = 2  # steps up WordNet from each class: same parent or grandparent
WNID = re.compile(r"n\d{8}")

# Broad kinds a person would call a group of photos, most specific first (a photo takes the first
# its class descends from); wnids of WordNet 3.0. They cover 813 of the ImageNet-1k classes.
KINDS: dict[str, str] = {
    "n02084071": "dog",
    "n01503061": "bird",
    "n01661091": "reptile",
    "n01627424": "amphibian",
    "n02512053": "fish",
    "n02159955": "insect",
    "n01767661": "other arthropod",
    "n01905661": "other invertebrate",
    "n02469914": "primate",
    "n02120997": "feline",
    "n02370806": "ungulate",
    "n01861778": "other mammal",
    "n04530566": "watercraft",
    "n04576211": "wheeled vehicle",
    "n03051540": "clothing",
    "n03800933": "musical instrument",
    "n00021265": "food",
    "n03405725": "furniture",
    "n03094503": "container",
    "n04341686": "structure",
    "n03183080": "other device",
    "n00019128": "natural object",
}

Transform = Callable[[Image.Image], tuple[Image.Image, int]]  # -> (image, JPEG quality)


def _half(image: Image.Image) -> tuple[Image.Image, int]:
    size = (max(1, image.width // 2), max(1, image.height // 2))
    return image.resize(size, Image.Resampling.LANCZOS), 70


def _recompress(image: Image.Image) -> tuple[Image.Image, int]:
    return image, 40


def _crop(image: Image.Image) -> tuple[Image.Image, int]:
    dx, dy = round(image.width * 0.05), round(image.height * 0.05)
    return image.crop((dx, dy, image.width - dx, image.height - dy)), 90


def _brighten(image: Image.Image) -> tuple[Image.Image, int]:
    return ImageEnhance.Brightness(image).enhance(1.2), 90


# name -> (what it does, how); every copy is saved as a JPEG at the quality the transform says
TRANSFORMS: dict[str, tuple[str, Transform]] = {
    "half_q70": ("downscaled to 50% (Lanczos), JPEG quality 70", _half),
    "q40": ("same size, JPEG recompressed at quality 40", _recompress),
    "crop90": ("centre crop keeping 90% of width and height, JPEG quality 90", _crop),
    "bright": ("brightness x1.2, JPEG quality 90", _brighten),
}


@dataclass
class Retrieval:
    recall1: float
    recall5: float
    mrr: float


@dataclass
class PairStats:
    average_precision: float
    best_f1: float
    best_threshold: float
    near: tuple[float, float]  # (precision, recall) at NEAR_THRESHOLD
    burst: tuple[float, float]  # (precision, recall) at BURST_THRESHOLD
    min_positive: float
    max_negative: float
    mean_negative: float  # how alike unrelated photos look: high means a collapsed embedding

    @property
    def margin(self) -> float:
        return self.min_positive - self.max_negative


@dataclass
class Semantic:
    """precision@NEIGHBOURS of related neighbours, and of as many random ones (chance)."""

    cousins: float
    cousins_chance: float
    kind: float
    kind_chance: float
    photos: int  # originals with a known class
    kind_photos: int  # those of one of KINDS


@dataclass
class PoolResult:
    pool: str
    easy: Retrieval  # copies vs originals
    hard: Retrieval  # copies vs originals + other photos' copies
    per_transform: dict[str, tuple[float, float]]  # name -> (hard recall@1, mean cos to original)
    pairs: PairStats
    semantic: Semantic | None  # None when the photos' names carry no wnid


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description=(
            "Compare CLS, mean-pooled and CLS+mean embeddings for finding resized, "
            "recompressed, cropped and brightened copies of photos (retrieval and duplicate "
            "pairs). Without --model the ViT-B/16 is randomly initialised. About 1-2 minutes "
            "on an idle 2-core CPU with bf16 hardware at the defaults, 3-4 without."
        )
    )
    parser.add_argument("path", type=Path, help="folder of photos (files sorted by name)")
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"originals, each with {len(TRANSFORMS)} copies (default {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--model",
        help="local checkpoint directory with real weights (default: a seeded random ViT-B/16)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--layer",
        type=int,
        default=defaults.layer,
        help="encoder layer whose tokens are pooled (default -1, the final normed output)",
    )
    return parser.parse_args(argv)


# -- the copies --------------------------------------------------------------------------------


def make_copies(photo: Path, folder: Path) -> list[str] | None:
    """[original, copy per transform] as paths, or None when the original cannot be opened."""
    try:
        with Image.open(photo) as opened:
            # the app honours EXIF orientation, and the copies lose their EXIF: bake it in
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as exc:
        print(f"  skipping {photo}: {exc}")
        return None
    paths = [str(photo)]
    for name, (_, transform) in TRANSFORMS.items():
        copy, quality = transform(image)
        path = folder / f"{photo.stem}.{name}.jpg"
        copy.save(path, "JPEG", quality=quality)
        paths.append(str(path))
    return paths


def make_groups(photos: Sequence[Path], folder: Path) -> list[list[str]]:
    folder.mkdir(parents=True)
    groups = [make_copies(photo, folder) for photo in photos]
    return [group for group in groups if group is not None]


def spread(photos: Sequence[Path], count: int) -> list[Path]:
    """``count`` photos evenly across the sorted list (all of them when there are fewer)."""
    if len(photos) <= count:
        return list(photos)
    return [photos[i] for i in np.linspace(0, len(photos) - 1, count).round().astype(int)]


# -- embedding ---------------------------------------------------------------------------------


def split_pools(both: np.ndarray) -> dict[str, np.ndarray]:
    """cls+mean vectors (last axis) -> every pool: each half is its own pool's unit vector,
    scaled by 1/sqrt 2, because the embedder normalises each half before concatenating."""
    half = both.shape[-1] // 2
    return {
        "cls": _unit(both[..., :half]),
        "mean": _unit(both[..., half:]),
        "cls+mean": both,
    }


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def check_split(settings: Settings, paths: Sequence[str], split: dict[str, np.ndarray]) -> float:
    """Min cosine of the split halves against the library's own cls and mean pools."""
    worst = 1.0
    for pool in ("cls", "mean"):
        embedder = app.load_model(settings.replace(pool=pool))
        _, vectors = embed_files(embedder, paths, settings.batch_size)
        worst = min(worst, float(np.min(np.sum(vectors * split[pool][: len(paths)], axis=1))))
        del embedder
    return worst


def embed_groups(
    embedder: Embedder, groups: list[list[str]], batch_size: int
) -> tuple[list[list[str]], np.ndarray]:
    """Kept groups and their (photos, 1 + transforms, dim) vectors; a group with any member
    that failed to decode is dropped, so every photo has all its copies."""
    paths = [path for group in groups for path in group]
    kept, vectors = embed_files(embedder, paths, batch_size)
    row = {path: i for i, path in enumerate(kept)}
    whole = [group for group in groups if all(path in row for path in group)]
    if not whole:
        raise SystemExit("no photo decoded together with all its copies")
    rows = np.array([[row[path] for path in group] for group in whole])
    return whole, vectors[rows]


# -- metrics (pure) ----------------------------------------------------------------------------


def ranks(
    queries: np.ndarray, gallery: np.ndarray, answers: np.ndarray, allowed: np.ndarray | None
) -> np.ndarray:
    """1-based rank of each query's answer in the gallery by cosine (unit vectors).

    ``allowed`` (queries, gallery) masks out gallery items a query must not see. Ties count
    against the answer, so a collapsed embedding cannot score by luck.
    """
    scores = queries @ gallery.T
    target = scores[np.arange(len(queries)), answers][:, None]
    beats = scores >= target
    if allowed is not None:
        beats &= allowed
    beats[np.arange(len(queries)), answers] = False
    return 1 + beats.sum(axis=1)


def retrieval(rank: np.ndarray) -> Retrieval:
    return Retrieval(
        recall1=float(np.mean(rank <= 1)),
        recall5=float(np.mean(rank <= 5)),
        mrr=float(np.mean(1.0 / rank)),
    )


def retrieval_ranks(vectors: np.ndarray, hard: bool) -> np.ndarray:
    """(photos, copies) ranks of each copy's original among the originals, or (``hard``) among
    the originals plus all copies of the other photos."""
    photos, members, dim = vectors.shape
    queries = vectors[:, 1:].reshape(-1, dim)
    owner = np.repeat(np.arange(photos), members - 1)
    if not hard:
        return ranks(queries, vectors[:, 0], owner, None).reshape(photos, members - 1)
    gallery = vectors.reshape(-1, dim)
    group = np.repeat(np.arange(photos), members)
    is_original = np.tile(np.arange(members) == 0, photos)
    # a copy must not find itself or its siblings: only its own original is allowed in
    allowed = (group[None, :] != owner[:, None]) | is_original[None, :]
    rank = ranks(queries, gallery, owner * members, allowed)
    return rank.reshape(photos, members - 1)


def pair_scores(vectors: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every unordered pair of distinct images, and whether both show one photo."""
    upper = np.triu_indices(len(vectors), k=1)
    scores = (vectors @ vectors.T)[upper]
    return scores, groups[upper[0]] == groups[upper[1]]


def at_threshold(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """(precision, recall) of calling every pair scoring >= threshold a duplicate."""
    called = scores >= threshold
    hits = int(np.sum(called & positive))
    precision = hits / int(called.sum()) if called.any() else 1.0
    return precision, hits / max(1, int(positive.sum()))


def best_f1(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(best F1, its threshold) over every threshold, i.e. every distinct score."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(positive[order])
    called = np.arange(1, len(ranked) + 1)
    f1 = 2 * hits / (called + positive.sum())  # 2PR/(P+R) with P=hits/called, R=hits/positives
    # a threshold calls every tied score alike: only the last of a run of ties is a real cut
    cut = np.r_[ranked[1:] != ranked[:-1], True]
    best = int(np.argmax(np.where(cut, f1, -1.0)))
    return float(f1[best]), float(ranked[best])


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mean of the precision at each positive, ranked by score (threshold-free)."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(positive[order])
    precision = hits / np.arange(1, len(scores) + 1)
    return float(np.sum(precision[positive[order]]) / max(1, int(positive.sum())))


def pair_stats(vectors: np.ndarray, groups: np.ndarray) -> PairStats:
    scores, positive = pair_scores(vectors, groups)
    f1, threshold = best_f1(scores, positive)
    return PairStats(
        average_precision=average_precision(scores, positive),
        best_f1=f1,
        best_threshold=threshold,
        near=at_threshold(scores, positive, NEAR_THRESHOLD),
        burst=at_threshold(scores, positive, BURST_THRESHOLD),
        min_positive=float(scores[positive].min()),
        max_negative=float(scores[~positive].max()),
        mean_negative=float(scores[~positive].mean()),
    )


def class_of(path: str) -> str | None:
    """The wnid an ImageNet file name starts with ("n02099712_Labrador_retriever.JPEG")."""
    found = WNID.match(Path(path).name)
    return found.group() if found else None


def cousin_matrix(wnids: Sequence[str], hierarchy: Hierarchy) -> np.ndarray:
    """(n, n) bool: the classes meet within COUSIN_LEVELS steps up from each."""
    ups = [_up(wnid, hierarchy, COUSIN_LEVELS) for wnid in wnids]
    nodes = {node: i for i, node in enumerate(sorted(set().union(*ups)))}
    incidence = np.zeros((len(wnids), len(nodes)), np.float32)
    for row, up in enumerate(ups):
        incidence[row, [nodes[node] for node in up]] = 1.0
    return (incidence @ incidence.T) > 0


def _up(wnid: str, hierarchy: Hierarchy, levels: int) -> set[str]:
    found, frontier = {wnid}, {wnid}
    for _ in range(levels):
        frontier = {p for node in frontier for p in hierarchy.parents.get(node, ())}
        found |= frontier
    return found


def kind_of(wnid: str, hierarchy: Hierarchy) -> str | None:
    ancestors = hierarchy.ancestors.get(wnid, frozenset())
    return next((KINDS[k] for k in KINDS if k in ancestors), None)


def precision_at(vectors: np.ndarray, relevant: np.ndarray, k: int) -> tuple[float, float]:
    """(mean precision@k of each row's k nearest other rows, the same for k random rows).

    ``relevant`` is (n, n) bool; the diagonal is ignored. Rows with no relevant other row
    still count: they are what the measure is about (a photo alone of its kind scores 0)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argpartition(-scores, k, axis=1)[:, :k]
    hits = np.take_along_axis(relevant, nearest, axis=1)
    others = relevant.copy()
    np.fill_diagonal(others, False)
    return float(hits.mean()), float(np.mean(others.sum(axis=1) / (len(vectors) - 1)))


def semantic(originals: np.ndarray, wnids: Sequence[str | None]) -> Semantic | None:
    """Semantic neighbours among the originals (one row per photo), or None without classes."""
    hierarchy = imagenet_hierarchy()
    known = [i for i, w in enumerate(wnids) if w is not None and w in hierarchy.ancestors]
    if len(known) <= NEIGHBOURS:
        return None
    classes = [wnids[i] for i in known]
    cousins = precision_at(originals[known], cousin_matrix(classes, hierarchy), NEIGHBOURS)
    kinds = [kind_of(wnid, hierarchy) for wnid in classes]
    with_kind = [i for i, kind in enumerate(kinds) if kind is not None]
    named = np.array([kinds[i] for i in with_kind])
    same_kind = named[:, None] == named[None, :]
    kind = (float("nan"), float("nan"))
    if len(with_kind) > NEIGHBOURS:
        kind = precision_at(originals[known][with_kind], same_kind, NEIGHBOURS)
    return Semantic(*cousins, *kind, photos=len(known), kind_photos=len(with_kind))


def evaluate(
    pool: str, vectors: np.ndarray, wnids: Sequence[str | None] | None = None
) -> PoolResult:
    """All metrics for one pooling; ``vectors`` is (photos, 1 + transforms, dim), unit rows;
    ``wnids`` the class of each photo, when known."""
    photos, members, dim = vectors.shape
    hard = retrieval_ranks(vectors, hard=True)
    to_original = np.sum(vectors[:, 1:] * vectors[:, :1], axis=2)  # (photos, transforms)
    per_transform = {
        name: (float(np.mean(hard[:, i] <= 1)), float(np.mean(to_original[:, i])))
        for i, name in enumerate(TRANSFORMS)
    }
    groups = np.repeat(np.arange(photos), members)
    return PoolResult(
        pool=pool,
        easy=retrieval(retrieval_ranks(vectors, hard=False).ravel()),
        hard=retrieval(hard.ravel()),
        per_transform=per_transform,
        pairs=pair_stats(vectors.reshape(-1, dim), groups),
        semantic=semantic(vectors[:, 0], wnids) if wnids is not None else None,
    )


# -- report ------------------------------------------------------------------------------------


def print_setup(args: argparse.Namespace, embedder: Embedder, random_weights: bool) -> None:
    import torch

    weights = "RANDOM (seeded ViT-B/16, untrained)" if random_weights else args.model
    final = args.layer == -1
    layer = "final output (after layer norm)" if final else f"hidden_states[{args.layer}]"
    print(f"CPU:        {cpu_name()}")
    print(f"torch:      {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"precision:  {embedder.precision} (pinned torch fp32), device {embedder.device}")
    print(f"weights:    {weights}")
    print(f"tokens:     {layer}; batch size {args.batch_size}")
    print("copies of each photo:")
    for name, (what, _) in TRANSFORMS.items():
        print(f"  {name:<9} {what}")


def print_retrieval(results: list[PoolResult], photos: int) -> None:
    copies = len(TRANSFORMS)
    print()
    print(f"RETRIEVAL: each of the {photos * copies} copies queries; rank of its own original")
    print(
        f"{'':<9} | vs the {photos} originals     | vs originals + other photos' copies "
        f"({photos + (photos - 1) * copies})"
    )
    print(f"{'pool':<9} | {'R@1':>6} {'R@5':>6} {'MRR':>6}  | {'R@1':>6} {'R@5':>6} {'MRR':>6}")
    for r in results:
        print(
            f"{r.pool:<9} | {r.easy.recall1:6.3f} {r.easy.recall5:6.3f} {r.easy.mrr:6.3f}  | "
            f"{r.hard.recall1:6.3f} {r.hard.recall5:6.3f} {r.hard.mrr:6.3f}"
        )
    print()
    print("per copy kind: R@1 vs originals + other copies / mean cosine to its original")
    print(f"{'pool':<9} | " + " ".join(f"{name:>14}" for name in TRANSFORMS))
    for r in results:
        cells = (f"{r1:6.3f} / {cos:5.3f}" for r1, cos in r.per_transform.values())
        print(f"{r.pool:<9} | " + " ".join(f"{cell:>14}" for cell in cells))


def print_pairs(results: list[PoolResult], photos: int) -> None:
    images = photos * (1 + len(TRANSFORMS))
    positives = photos * (1 + len(TRANSFORMS)) * len(TRANSFORMS) // 2
    print()
    print(
        f"DUPLICATE PAIRS: all {images * (images - 1) // 2} pairs of {images} images; the "
        f"{positives} pairs showing one photo are positives"
    )
    print(
        f"{'pool':<9} | {'AP':>6} {'best F1':>7} {'@ cos':>7} | "
        f"{f'P/R @ {NEAR_THRESHOLD} near':>17} | {f'P/R @ {BURST_THRESHOLD} burst':>18} | "
        f"{'min pos':>7} {'max neg':>7} {'margin':>7} | {'mean neg':>8}"
    )
    for r in results:
        p = r.pairs
        print(
            f"{r.pool:<9} | {p.average_precision:6.3f} {p.best_f1:7.3f} {p.best_threshold:7.4f} | "
            f"{p.near[0]:8.3f}/{p.near[1]:<8.3f} | {p.burst[0]:9.3f}/{p.burst[1]:<8.3f} | "
            f"{p.min_positive:7.4f} {p.max_negative:7.4f} {p.margin:+7.4f} | "
            f"{p.mean_negative:8.4f}"
        )
    print(
        "(near/burst: NEAR_THRESHOLD/BURST_THRESHOLD of vitsearch.explore.duplicates; the app\n"
        " also needs burst pairs taken within 30 s, ignored here. margin > 0: one threshold\n"
        " separates every positive pair from every negative one; mean neg: the typical cosine of\n"
        " two unrelated photos)"
    )


def print_semantic(results: list[PoolResult]) -> None:
    first = results[0].semantic
    if first is None:
        print()
        print("SEMANTIC NEIGHBOURS: skipped (the photos' names carry no ImageNet wnid)")
        return
    print()
    print(
        f"SEMANTIC NEIGHBOURS: each original's {NEIGHBOURS} nearest other originals, "
        f"precision@{NEIGHBOURS} (random {NEIGHBOURS} in brackets)"
    )
    print(
        f"{'pool':<9} | {f'cousins ({first.photos} photos)':>24} | "
        f"{f'same kind ({first.kind_photos} photos)':>26}"
    )
    for r in results:
        m = r.semantic
        print(
            f"{r.pool:<9} | {m.cousins:14.3f} ({m.cousins_chance:.3f}) | "
            f"{m.kind:16.3f} ({m.kind_chance:.3f})"
        )
    print(
        f"(cousins: classes meet within {COUSIN_LEVELS} WordNet steps up from each, i.e. share "
        "a parent or grandparent synset; kind: the same of KINDS)"
    )


def winner(results: list[PoolResult], metric: Callable[[PoolResult], float]) -> str:
    values = [metric(r) for r in results]
    best = max(values)
    tied = [r.pool for r, v in zip(results, values, strict=True) if abs(v - best) < 5e-4]
    return tied[0] if len(tied) == 1 else "tie " + "=".join(tied)


VERDICT_METRICS: dict[str, Callable[[PoolResult], float]] = {
    "R@1 vs originals": lambda r: r.easy.recall1,
    "R@1 vs +copies": lambda r: r.hard.recall1,
    "MRR vs +copies": lambda r: r.hard.mrr,
    "pair AP": lambda r: r.pairs.average_precision,
    "best F1": lambda r: r.pairs.best_f1,
    "margin": lambda r: r.pairs.margin,
}
SEMANTIC_METRICS: dict[str, Callable[[PoolResult], float]] = {
    "cousins P@10": lambda r: r.semantic.cousins,
    "kind P@10": lambda r: r.semantic.kind,
}


def print_verdict(results: list[PoolResult]) -> None:
    metrics = dict(VERDICT_METRICS)
    if results[0].semantic is not None:
        metrics |= SEMANTIC_METRICS
    wins = "; ".join(f"{name}: {winner(results, fn)}" for name, fn in metrics.items())
    print()
    print(f"VERDICT (best per metric): {wins}")


# -- run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, photos: list[Path], temp: Path) -> None:
    random_weights = args.model is None
    model = str(save_vit_b16(temp / "vit-b16")) if random_weights else args.model
    settings = load_settings(
        environ={},
        home=temp / "home",
        model=model,
        pool="cls+mean",
        layer=args.layer,
        backend="torch",
        precision="fp32",
        batch_size=args.batch_size,
        threads=args.threads,
    )
    embedder = app.load_model(settings)
    print_setup(args, embedder, random_weights)
    groups = make_groups(photos, temp / "copies")
    busy: dict[str, float] = {}
    started = time.perf_counter()
    with CpuMeter(busy, "embedding"):
        groups, both = embed_groups(embedder, groups, args.batch_size)
    seconds = time.perf_counter() - started
    del embedder
    split = split_pools(both)
    report_embedding(settings, groups, split, seconds, busy)
    wnids = [class_of(group[0]) for group in groups]
    results = [evaluate(pool, split[pool], wnids) for pool in POOLS]
    print_retrieval(results, len(groups))
    print_pairs(results, len(groups))
    print_semantic(results)
    print_verdict(results)


def report_embedding(
    settings: Settings,
    groups: list[list[str]],
    split: dict[str, np.ndarray],
    seconds: float,
    busy: dict[str, float],
) -> None:
    """How the vectors were made, and proof that splitting cls+mean equals the other pools."""
    images = sum(len(group) for group in groups)
    flat = {pool: v.reshape(-1, v.shape[-1]) for pool, v in split.items()}
    first = [path for group in groups for path in group][: settings.batch_size]
    agreement = check_split(settings, first, flat)
    print()
    print(
        f"embedded {len(groups)} photos + {images - len(groups)} copies = {images} images in "
        f"{seconds:.1f}s ({images / seconds:.1f} images/s), one forward each with pool=cls+mean"
    )
    verdict = "OK" if agreement >= SPLIT_CHECK_COSINE else "MISMATCH: the pools below are wrong"
    print(
        f"cls and mean are the normalised halves of cls+mean: min cosine to --pool cls/mean on "
        f"{len(first)} images {agreement:.5f} ({verdict})"
    )
    if busy["embedding"] > BUSY_WARNING_CORES:
        print(f"note: other processes used {busy['embedding']:.2f} cores meanwhile (speed only)")


def print_random_warning() -> None:
    print("!" * 90)
    print("!! RANDOM WEIGHTS: the ViT-B/16 is randomly initialised (torch.manual_seed(0)), not")
    print("!! trained. The numbers show what the architecture and each pooling do with untrained")
    print("!! weights, NOT how a trained model ranks. Pass --model DIR for real weights.")
    print("!" * 90)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.images < 2 or args.batch_size < 1:
        raise SystemExit("--images must be at least 2 and --batch-size at least 1")
    photos = spread(pick_photos(args.path, 0), args.images)
    if len(photos) < 2:
        raise SystemExit(f"need at least 2 photos in {args.path}")
    if args.model is None:
        print_random_warning()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitsearch-bench-pooling-") as temp:
        run(args, photos, Path(temp))
    if args.model is None:
        print("(random weights: see the warning at the top)")
    print(f"total time: {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
