"""Duplicate tiers on real weights: which copies are caught, which distinct photos are joined.

Run: ``python benchmarks/bench_duplicates.py PATH --model DIR [--images N] [--bursts N]
[--copied N] [--wordnet FILE] [--work DIR] [--batch-size B] [--threads T]``. PATH: photos named
``<wnid>_<class>.JPEG`` (e.g. /work/shared/data/imagenet-sample, one photo per class); they are
copied (each with its own capture time) and modified in a temporary directory (or ``--work``).

Each photo gets the copies people make (:data:`COPIES`): resized, recompressed, re-exported,
greyscale, sepia, cropped to 90%, turned by 90 degrees with the EXIF lost, mirrored. The first
``--bursts`` photos also get two overlapping crops (the left and right 70%) stamped 5 s apart: a
stand-in for two shots of one moment (a pan), which the burst tier must catch and the near tier
must not. Each photo's group sits an hour away from the next one in time.

Everything goes through the real pipeline: ``vitsearch index`` (decode, perceptual hash, ViT on
the torch fp32 backend) into a temporary library, then ``find_duplicates``. It prints

- the pair curve: for each rule (CLS cosine alone, the hash alone, both), the precision over
  all pairs and the recall of each copy kind against its original. Negatives are every pair of
  images of different photos; the hard ones are photos of *sibling* classes (classes with a
  common WordNet parent, e.g. two terrier breeds: distinct photos of the same kind of thing);
- the groups the app reports: which copies share a group with their original, whether any group
  joins two photos, and whether the tiers share a photo.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _models import add_model_options
from _photos import index_folders, pick_photos
from PIL import Image, ImageOps

from vitsearch.config import load_settings
from vitsearch.explore import duplicates as dup
from vitsearch.machine.hardware import cpu_name
from vitsearch.photos import phash
from vitsearch.store import open_library

DEFAULT_IMAGES = 1000
DEFAULT_BURSTS = 300
HOUR = 3600.0
KEEP_COSINE = 0.5  # pairs below this cosine and above KEEP_BITS are never called by any rule
KEEP_BITS = 20

Copy = Callable[[Image.Image], Image.Image]


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), (40, 26, 13), (255, 240, 192))


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * right), round(h * bottom)))


# name -> (what it is, how, file suffix, save options)
COPIES: dict[str, tuple[str, Copy, str, dict]] = {
    "resized": (
        "50% (Lanczos), JPEG q70",
        lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
        "jpg",
        {"quality": 70},
    ),
    "recompressed": ("JPEG q40", lambda im: im, "jpg", {"quality": 40}),
    "re-exported": ("WebP q80", lambda im: im, "webp", {"quality": 80}),
    "greyscale": ("greyscale, JPEG q90", ImageOps.grayscale, "jpg", {"quality": 90}),
    "sepia": ("sepia toned, JPEG q90", _sepia, "jpg", {"quality": 90}),
    "crop90": (
        "centre 90% of width and height, JPEG q90",
        lambda im: _crop(im, 0.05, 0.05, 0.95, 0.95),
        "jpg",
        {"quality": 90},
    ),
    "rot90": (
        "turned 90 degrees clockwise, no EXIF, JPEG q90",
        lambda im: im.transpose(Image.Transpose.ROTATE_270),
        "jpg",
        {"quality": 90},
    ),
    "mirror": ("left-right mirror, JPEG q90", ImageOps.mirror, "jpg", {"quality": 90}),
}
BURST_SHOTS: dict[str, Copy] = {
    "left": lambda im: _crop(im, 0.0, 0.0, 0.7, 1.0),
    "right": lambda im: _crop(im, 0.3, 0.0, 1.0, 1.0),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Precision/recall of the duplicate tiers on real weights: copies of each photo as "
            "positives, photos of sibling WordNet classes as hard negatives. About 4 minutes "
            "on an idle 2-core CPU for 1000 photos with ViT-Ti."
        )
    )
    parser.add_argument("path", type=Path, help="folder of <wnid>_<class>.JPEG photos")
    parser.add_argument("--model", required=True, help="local checkpoint directory (trained)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="originals (1000)")
    parser.add_argument(
        "--copied",
        type=int,
        default=0,
        help="only the first N photos get copies, the rest are distractors (default: all)",
    )
    parser.add_argument(
        "--bursts", type=int, default=DEFAULT_BURSTS, help="photos that also get 2 burst shots"
    )
    parser.add_argument(
        "--wordnet",
        type=Path,
        help="wordnet.is_a.txt (parent child); default: PATH/../wordnet/wordnet.is_a.txt",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the copies and the library here (reused when it exists) instead of a temp dir",
    )
    add_model_options(parser)
    return parser.parse_args(argv)


# -- the library -------------------------------------------------------------------------------


def make_folder(photos: Sequence[Path], copied: int, bursts: int, folder: Path) -> int:
    """Originals and copies in ``folder``; each photo an hour from the next."""
    (folder / "originals").mkdir(parents=True)
    copies = folder / "copies"
    copies.mkdir()
    start = time.time() - len(photos) * HOUR
    for number, photo in enumerate(photos):
        when = start + number * HOUR
        # a copy of the file (same bytes) whose time says when it was taken
        shutil.copyfile(photo, folder / "originals" / photo.name)
        os.utime(folder / "originals" / photo.name, (when, when))
        if copied and number >= copied:
            continue
        with Image.open(photo) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        for kind, (_, make, suffix, options) in COPIES.items():
            _save(make(image), copies / f"{photo.stem}.{kind}.{suffix}", when, options)
        if number < bursts:
            for offset, (shot, make) in enumerate(BURST_SHOTS.items()):
                _save(make(image), copies / f"{photo.stem}.{shot}.jpg", when + 5 * offset, {})
    return len(photos)


def _save(image: Image.Image, path: Path, when: float, options: dict) -> None:
    image.save(path, **options)
    os.utime(path, (when, when))


def read_library(home: Path):
    """(ids, paths, unit vectors, unsigned hashes) of every indexed photo."""
    with open_library(home) as library:
        parts = list(library.iter_embeddings())
        ids = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts])
        details = library.details(ids.tolist())
        hashes = library.phashes(ids.tolist())
    paths = [details[int(i)].path for i in ids]
    return ids, paths, vectors, np.array([hashes[int(i)] for i in ids], dtype=np.uint64)


def truth(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(photo stem, kind) of each path: kind is original, a copy kind, left or right."""
    stems, kinds = [], []
    for path in paths:
        name = Path(path).name
        if "/originals/" in path:
            stems.append(Path(name).stem)
            kinds.append("original")
        else:
            stem, kind, _ = name.rsplit(".", 2)
            stems.append(stem)
            kinds.append(kind)
    return stems, kinds


# -- pairs -------------------------------------------------------------------------------------


def close_pairs(vectors: np.ndarray, hashes: np.ndarray, chunk: int = 512):
    """(i, j, cosine, bits) of every pair i < j that any rule could call a duplicate."""
    rotated = phash.orientations_array(hashes)
    found = []
    for start in range(0, len(vectors), chunk):
        rows = np.arange(start, min(start + chunk, len(vectors)))
        cosine = vectors[rows] @ vectors.T
        bits = np.full(cosine.shape, phash.BITS, dtype=np.int64)
        for other in rotated:
            bits = np.minimum(bits, np.bitwise_count(hashes[rows, None] ^ other[None, :]))
        keep = (np.arange(len(vectors))[None, :] > rows[:, None]) & (
            (cosine >= KEEP_COSINE) | (bits <= KEEP_BITS)
        )
        i, j = np.nonzero(keep)
        found.append((rows[i], j, cosine[i, j], bits[i, j]))
    return tuple(np.concatenate([f[k] for f in found]) for k in range(4))


def sibling_classes(stems: Sequence[str], is_a: Path) -> dict[str, str]:
    """wnid -> a WordNet parent that at least one other photo's class shares."""
    parents: dict[str, list[str]] = {}
    for line in is_a.read_text().splitlines():
        parent, child = line.split()
        parents.setdefault(child, []).append(parent)
    wnids = {s.split("_", 1)[0] for s in stems}
    counts: dict[str, int] = {}
    for wnid in wnids:
        for parent in parents.get(wnid, []):
            counts[parent] = counts.get(parent, 0) + 1
    return {wnid: next((p for p in parents.get(wnid, []) if counts[p] > 1), "") for wnid in wnids}


def pair_kinds(i, j, stems, kinds, parent_of) -> np.ndarray:
    """Per pair: the copy kind (original vs copy), 'copies' (two copies of one photo), 'burst'
    (left vs right shot), 'overlap' (a shot vs the photo: not judged), 'sibling' or 'other'."""
    out = []
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ka, kb = kinds[a], kinds[b]
        if stems[a] == stems[b]:
            shots = {ka, kb} & set(BURST_SHOTS)
            if shots == set(BURST_SHOTS):
                out.append("burst")
            elif shots:
                out.append("overlap")
            elif "original" in (ka, kb):
                out.append(kb if ka == "original" else ka)
            else:
                out.append("copies")
            continue
        pa, pb = (parent_of[stems[x].split("_", 1)[0]] for x in (a, b))
        out.append("sibling" if pa and pa == pb else "other")
    return np.array(out)


def rules() -> list[tuple[str, Callable]]:
    cos = [(f"cos>={t}", lambda c, b, t=t: c >= t) for t in (0.80, 0.85, 0.90, 0.92, 0.95)]
    bits = [(f"bits<={h}", lambda c, b, h=h: b <= h) for h in (4, 8, 12)]
    both = [
        (f"bits<={h} & cos>={t}", lambda c, b, h=h, t=t: (b <= h) & (c >= t))
        for h in (8, 10, 12, 14, 16)
        for t in (0.5, 0.6, 0.7)
    ]
    return cos + bits + both


def print_curve(cosine, bits, labels, totals: dict[str, int]) -> None:
    positive = np.isin(labels, [*COPIES, "copies"])
    judged = labels != "overlap"
    print()
    print(
        "PAIR CURVE: precision over every pair of images (positives: two images of one photo; "
        "negatives: images of two photos), recall of each copy against its original"
    )
    head = " ".join(f"{k[:7]:>7}" for k in COPIES)
    print(f"{'rule':<20} {'prec':>6} {'FP sib':>6} {'FP oth':>6} | {head} | burst")
    for name, rule in rules():
        called = rule(cosine, bits) & judged
        hits = int(np.sum(called & positive))
        precision = hits / max(1, int(called.sum()))
        recall = " ".join(f"{np.sum(called & (labels == k)) / totals[k]:7.3f}" for k in COPIES)
        print(
            f"{name:<20} {precision:6.4f} {np.sum(called & (labels == 'sibling')):6d} "
            f"{np.sum(called & (labels == 'other')):6d} | {recall} | "
            f"{np.sum(called & (labels == 'burst')) / max(1, totals['burst']):5.3f}"
        )
    print("(FP sib / FP oth: pairs of two different photos called duplicates, of sibling classes")
    print(
        " / of unrelated classes; burst: left/right shots called by the rule, which near must not)"
    )


def print_distributions(cosine, bits, labels, totals) -> None:
    print()
    print("per kind: median CLS cosine / median hash bits (of pairs with cos >= 0.5 or bits <= 20)")
    for kind in [*COPIES, "burst", "sibling", "other"]:
        mask = labels == kind
        if mask.any():
            print(
                f"  {kind:<13} {np.median(cosine[mask]):.3f} / {np.median(bits[mask]):4.1f} "
                f"({int(mask.sum())} of {totals.get(kind, '?')} pairs kept)"
            )


# -- groups ------------------------------------------------------------------------------------


def judge_groups(groups, stems_of: dict[int, str], kind_of: dict[int, str]) -> None:
    seen: dict[int, str] = {}
    shared = mixed = 0
    together: dict[str, int] = {k: 0 for k in COPIES}
    copies_of: dict[str, int] = {k: 0 for k in COPIES}
    for kind in kind_of.values():
        if kind in copies_of:
            copies_of[kind] += 1
    bursts = 0
    for group in groups:
        ids = [m.id for m in group.members]
        shared += sum(1 for i in ids if i in seen)
        seen.update((i, group.kind) for i in ids)
        photos = {stems_of[i] for i in ids}
        mixed += len(photos) > 1
        kinds = [kind_of[i] for i in ids]
        if group.kind in ("exact", "near") and "original" in kinds:
            for k in kinds:
                together[k] = together.get(k, 0) + (k in COPIES)
        if group.kind == "burst":
            bursts += sum(1 for k in kinds if k == "right")
    counts = {k: sum(1 for g in groups if g.kind == k) for k in dup.KINDS}
    print()
    print(f"GROUPS the app reports (find_duplicates, default cuts): {counts}")
    print(
        f"  photos in more than one group: {shared}; groups joining two different photos: {mixed}"
    )
    print("  copies in a near/exact group with their original:")
    for k in COPIES:
        print(
            f"    {k:<13} {together[k]}/{copies_of[k]} = {together[k] / max(1, copies_of[k]):.3f}"
        )
    pairs = sum(1 for k in kind_of.values() if k == "right")
    print(f"  burst shots (left+right) in one burst group: {bursts}/{pairs}")
    in_near = sum(1 for i, k in seen.items() if k == "near" and kind_of[i] in BURST_SHOTS)
    print(f"  burst shots placed in a near group instead: {in_near}")


# -- run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, temp: Path) -> None:
    photos = pick_photos(args.path, args.images)
    settings = load_settings(
        environ={},
        home=temp / "home",
        model=args.model,
        backend="torch",
        precision="fp32",
        batch_size=args.batch_size,
        threads=args.threads,
    )
    print(f"CPU:        {cpu_name()}")
    print(f"weights:    {args.model} (torch fp32)")
    copied = min(args.copied or len(photos), len(photos))
    print(
        f"photos:     {len(photos)} from {args.path}: {copied} with copies, "
        f"{min(args.bursts, copied)} with bursts"
    )
    for kind, (what, *_) in COPIES.items():
        print(f"  {kind:<13} {what}")
    started = time.perf_counter()
    if not (temp / "album").exists():
        make_folder(photos, args.copied, args.bursts, temp / "album")
    summary = index_folders(settings, [temp / "album"])
    print(
        f"indexed: {summary.line()} (with making the copies: {time.perf_counter() - started:.0f}s)"
    )
    ids, paths, vectors, hashes = read_library(settings.home)
    stems, kinds = truth(paths)
    is_a = args.wordnet or args.path.parent / "wordnet" / "wordnet.is_a.txt"
    parent_of = sibling_classes(stems, is_a)
    i, j, cosine, bits = close_pairs(vectors, hashes)
    labels = pair_kinds(i, j, stems, kinds, parent_of)
    totals = {k: kinds.count(k) for k in COPIES} | {"burst": kinds.count("right")}
    siblings = _sibling_pair_count(stems, parent_of, kinds)
    print(f"images: {len(ids)}; sibling-class photo pairs (hard negatives): {siblings}")
    print_distributions(cosine, bits, labels, totals)
    print_curve(cosine, bits, labels, totals)
    started = time.perf_counter()
    with open_library(settings.home) as library:
        groups = dup.find_duplicates(library)
    print(f"\nfind_duplicates: {time.perf_counter() - started:.1f}s for {len(ids)} photos")
    judge_groups(
        groups,
        dict(zip(ids.tolist(), stems, strict=True)),
        dict(zip(ids.tolist(), kinds, strict=True)),
    )


def _sibling_pair_count(stems, parent_of, kinds) -> int:
    parents = [
        parent_of[s.split("_", 1)[0]] for s, k in zip(stems, kinds, strict=True) if k == "original"
    ]
    _, counts = np.unique([p for p in parents if p], return_counts=True)
    return int(sum(c * (c - 1) // 2 for c in counts))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="vitsearch-bench-duplicates-") as temp:
            run(args, Path(temp))
    print(f"total time: {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
