"""Duplicate tiers: disjoint, no chains, copies confirmed by the perceptual hash."""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.helpers import (
    IMAGENET_SAMPLE,
    NO_REAL_MODEL,
    NO_SAMPLE,
    REAL_MODEL,
    draw_photo,
    image_entries,
    once,
)
from vitsearch.config import load_settings
from vitsearch.explore import duplicates
from vitsearch.explore.duplicates import COPY_BITS, find_duplicates
from vitsearch.indexer.reconcile import Indexer
from vitsearch.photos import phash
from vitsearch.photos.decode import read_photo
from vitsearch.records import ModelInfo
from vitsearch.store import open_library

TURNS = [None, *Image.Transpose]  # the 8 orientations (and the two diagonal flips)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def partner(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` to unit ``v``."""
    noise = rng.standard_normal(v.shape)
    noise -= (noise @ v) * v
    return unit(cosine * v + np.sqrt(1 - cosine**2) * unit(noise))


def flip_bits(value: int, count: int, rng: np.random.Generator) -> int:
    for bit in rng.choice(np.arange(1, 64), size=count, replace=False):
        value ^= 1 << int(bit)
    return value


def plant_hashed(home: Path, vectors, hashes, taken_at=None, sizes=None) -> list[int]:
    """Rows as the indexer writes them, each with its perceptual hash."""
    paths = [f"/photos/p{i:05d}.jpg" for i in range(len(vectors))]
    with open_library(home, write=True) as library:
        library.adopt_model(ModelInfo("planted", "planted:1", vectors.shape[1]), "fp32")
        root = library.root_id("/photos")
        entries = image_entries(vectors, root, paths, taken_at=taken_at, sizes=sizes)
        entries = [replace(e, phash=h) for e, h in zip(entries, hashes, strict=True)]
        return library.write_batch(entries, [])


def member_sets(groups) -> dict[str, list[frozenset[int]]]:
    found: dict[str, list[frozenset[int]]] = {}
    for g in groups:
        found.setdefault(g.kind, []).append(frozenset(m.id for m in g.members))
    return found


def turned(image: Image.Image, turn) -> Image.Image:
    return image if turn is None else image.transpose(turn)


# -- the hash --------------------------------------------------------------------------------


def test_hash_follows_every_turn_and_mirror(tmp_path: Path) -> None:
    image = Image.open(draw_photo(tmp_path / "a.png", seed=3, size=(64, 64), fmt="PNG"))
    value = phash.photo_hash(image)
    for turn in TURNS:
        other = phash.photo_hash(turned(image, turn))
        assert other in phash.orientations(value)  # exact: the hash of the turned picture
        assert phash.distance(value, other) == 0


def test_hash_survives_copies_and_tells_photos_apart(tmp_path: Path) -> None:
    image = Image.open(draw_photo(tmp_path / "a.jpg", seed=5, size=(320, 240))).convert("RGB")
    value = phash.photo_hash(image)
    copies = [
        image.resize((160, 120), Image.Resampling.LANCZOS),
        ImageOps.grayscale(image),
        ImageOps.colorize(ImageOps.grayscale(image), (40, 26, 13), (255, 240, 192)),
        image.transpose(Image.Transpose.ROTATE_90),
        ImageOps.mirror(image).resize((200, 150)),
    ]
    assert all(phash.distance(value, phash.photo_hash(c)) <= 3 for c in copies)
    others = [
        phash.photo_hash(Image.open(draw_photo(tmp_path / f"{s}.png", seed=s, fmt="PNG")))
        for s in range(10, 40)
    ]
    apart = [phash.distance(a, b) for n, a in enumerate(others) for b in others[n + 1 :]]
    assert min(apart) > COPY_BITS and np.mean(apart) > 18


def test_vectorised_distances_match_the_scalar_ones() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 200, dtype=np.int64).view(np.uint64) * np.uint64(2)
    b = np.array([phash.orientations(int(x))[n % 8] for n, x in enumerate(a)], dtype=np.uint64)
    b[::3] = rng.integers(0, 2**63, len(b[::3]), dtype=np.int64).view(np.uint64)
    expected = [phash.distance(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    assert phash.distances(a, b).tolist() == expected
    assert all(d == 0 for d in phash.distances(a, b)[1::3])


# -- tiers and groups (planted embeddings and hashes) -----------------------------------------


def test_tiers_are_disjoint(home: Path) -> None:
    rng = np.random.default_rng(1)
    a = unit(rng.standard_normal(32))
    copy = partner(a, 0.99, rng)
    shot = partner(a, 0.92, rng)  # another shot of the moment: alike, but another picture
    far = unit(rng.standard_normal(32))
    h = int(rng.integers(0, 2**62))
    hashes = [h, h, flip_bits(h, 30, rng), int(rng.integers(0, 2**62))]
    sizes = [(640, 480), (320, 240), (640, 480), (640, 480)]
    ids = plant_hashed(
        home, np.vstack([a, copy, shot, far]), hashes, taken_at=[0, 0, 5, 900], sizes=sizes
    )
    with open_library(home) as library:
        groups = find_duplicates(library)
        burst_only = find_duplicates(library, ("burst",))
    members = [m.id for g in groups for m in g.members]
    assert len(members) == len(set(members))  # a photo is in one group at most
    assert member_sets(groups) == {"near": [frozenset(ids[:2])]}
    assert burst_only == []  # the shot's only partners are already near copies of each other


def test_a_chain_is_not_one_group(home: Path) -> None:
    rng = np.random.default_rng(2)
    b = unit(rng.standard_normal(32))
    a, c = partner(b, 0.97, rng), partner(b, 0.97, rng)
    h = int(rng.integers(0, 2**62))
    ha, hc = flip_bits(h, 5, rng), flip_bits(h, 5, rng)
    while phash.distance(ha, hc) <= 16:  # a and c differ too much to be copies of each other
        hc = flip_bits(hc, 4, rng)
    # b is the largest: the keeper, with a and c each a copy of it but not of each other
    ids = plant_hashed(
        home, np.vstack([a, b, c]), [ha, h, hc], sizes=[(64, 48), (640, 480), (64, 48)]
    )
    with open_library(home) as library:
        groups = find_duplicates(library, ("near", "burst"))
    found = member_sets(groups)["near"]
    assert len(found) == 1 and ids[1] in found[0] and len(found[0]) == 2
    assert not any({ids[0], ids[2]} <= g for g in found)


def test_hash_decides_between_copies_and_lookalikes(home: Path) -> None:
    rng = np.random.default_rng(3)
    dog, cat = unit(rng.standard_normal((2, 48)))
    same_breed = partner(dog, 0.97, rng)  # as alike as a copy to the model, another photo
    grey_copy = partner(cat, 0.6, rng)  # the model sees greyscale as far; the hash does not
    h_dog, h_cat = (int(x) for x in rng.integers(0, 2**62, 2))
    turned_copy = partner(cat, 0.4, rng)  # turned by 90 degrees: too far for a cosine search
    hashes = [
        h_dog,
        flip_bits(h_dog, 28, rng),
        h_cat,
        flip_bits(h_cat, 2, rng),
        flip_bits(phash.orientations(h_cat)[5], 1, rng),
    ]
    vectors = np.vstack([dog, same_breed, cat, grey_copy, turned_copy])
    sizes = [(640, 480)] * 3 + [(64, 48)] * 2
    ids = plant_hashed(home, vectors, hashes, taken_at=[0, 3600, 7200, 9000, 10800], sizes=sizes)
    with open_library(home) as library:
        groups = find_duplicates(library)
    assert member_sets(groups) == {"near": [frozenset({ids[2], ids[3], ids[4]})]}
    assert groups[0].keeper.id == ids[2] and groups[0].hash_bits <= 3


def test_hash_search_finds_exactly_the_pairs_within_copy_bits(home: Path) -> None:
    """The FAISS multi-index against brute force: partners at 0..12 bits in a random turn."""
    rng = np.random.default_rng(4)
    count = 120
    base = unit(rng.standard_normal((count, 64)))
    partners = np.vstack([partner(v, 0.5, rng) for v in base])  # below the cosine search
    values = [int(x) for x in rng.integers(0, 2**62, count)]
    bits = [n % 13 for n in range(count)]
    twins = [
        flip_bits(phash.orientations(v)[n % 8], b, rng)
        for n, (v, b) in enumerate(zip(values, bits, strict=True))
    ]
    ids = plant_hashed(home, np.vstack([base, partners]), values + twins)
    with open_library(home) as library:
        found = set(member_sets(find_duplicates(library, ("near",))).get("near", []))
    everything = np.array(values + twins, dtype=np.uint64)
    all_vectors = np.vstack([base, partners])
    expected = set()
    for i in range(2 * count):
        close = phash.distances(np.repeat(everything[i], 2 * count), everything)
        for j in np.flatnonzero(close <= COPY_BITS):
            if j > i and all_vectors[i] @ all_vectors[j] >= 0.3:
                expected.add(frozenset({ids[i], ids[int(j)]}))
    assert found == expected
    assert {frozenset({ids[n], ids[count + n]}) for n in range(count) if bits[n] <= 7} <= found


# -- the real pipeline ------------------------------------------------------------------------


def _index(home: Path, folder: Path, embedder) -> None:
    with open_library(home, write=True) as library:
        Indexer(library, lambda: embedder, batch_size=8).reconcile([folder])


def test_the_hash_is_stored_at_index_time(home: Path, tmp_path: Path, fake_embedder) -> None:
    paths = [draw_photo(tmp_path / "album" / f"{i}.jpg", seed=i) for i in range(6)]
    _index(home, tmp_path / "album", fake_embedder)
    with open_library(home) as library:
        stored = library.phashes()
        by_path = {p.path: stored[i] for i, p in library.details(list(stored)).items()}
    for path in paths:
        image = read_photo(str(path), fake_embedder.decode_size).image
        assert by_path[str(path)] == phash.photo_hash(image)


def _copies(folder: Path, seeds: range) -> list[tuple[Path, list[Path]]]:
    made = []
    for seed in seeds:
        original = draw_photo(folder / f"{seed}.jpg", seed=seed, size=(192, 144), quality=95)
        image = Image.open(original).convert("RGB")
        copies = []
        for name, copy in {
            "grey": ImageOps.grayscale(image),
            "turned": image.transpose(Image.Transpose.ROTATE_270),
            "mirror": ImageOps.mirror(image),
        }.items():
            copies.append(folder / f"{seed}.{name}.jpg")
            copy.save(copies[-1], quality=90)
        made.append((original, copies))
    return made


def _photo_of(path: str) -> str:
    return Path(path).name.split(".")[0]


def _grouped_with_original(groups, made) -> list[bool]:
    by_path = {m.path: g for g in groups for m in g.members}
    return [
        by_path.get(str(copy)) is not None and by_path.get(str(copy)) is by_path.get(str(original))
        for original, copies in made
        for copy in copies
    ]


@pytest.mark.slow
def test_drawn_copies_are_grouped_by_the_real_pipeline(
    home: Path, tmp_path: Path, tiny_model
) -> None:
    made = _copies(tmp_path / "album", range(8))
    settings = load_settings(
        environ={}, home=home, model=str(tiny_model), backend="torch", precision="fp32"
    )

    once(settings, write=True).index([tmp_path / "album"])
    with open_library(home) as library:
        groups = find_duplicates(library)
    assert all(_grouped_with_original(groups, made))
    assert all(len({_photo_of(m.path) for m in g.members}) == 1 for g in groups)


@pytest.mark.parametrize("rows_at_once", [duplicates.DETAILS_CHUNK, 1])
def test_an_old_library_without_hashes_still_works(
    home: Path, tmp_path: Path, fake_embedder, caplog, monkeypatch, rows_at_once
) -> None:
    monkeypatch.setattr(duplicates, "DETAILS_CHUNK", rows_at_once)  # the same, row by row
    original = draw_photo(tmp_path / "album" / "a.jpg", seed=1, size=(192, 144), quality=95)
    Image.open(original).resize((96, 72)).save(tmp_path / "album" / "a.small.jpg", quality=80)
    draw_photo(tmp_path / "album" / "b.jpg", seed=2)
    _index(home, tmp_path / "album", fake_embedder)
    database = home / "library.sqlite3"
    with sqlite3.connect(database) as db:  # as schema 4 left it: no hash column
        db.execute("ALTER TABLE images DROP COLUMN phash")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with open_library(home) as library:
        groups = find_duplicates(library, ("near",))
        assert set(library.phashes().values()) == {None}
    assert len(groups) == 1 and groups[0].hash_bits is not None  # computed from the files
    assert {_photo_of(m.path) for m in groups[0].members} == {"a"}
    (tmp_path / "album" / "a.small.jpg").unlink()  # a file gone: its pairs rest on the cosine
    (tmp_path / "album" / "a.jpg").unlink()
    with caplog.at_level(logging.WARNING), open_library(home) as library:
        alone = find_duplicates(library, ("near",))
    assert "no perceptual hash" in caplog.text
    assert all(g.hash_bits is None for g in alone)


# -- trained weights --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.skipif(not REAL_MODEL, reason=NO_REAL_MODEL)
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=NO_SAMPLE)
def test_copies_of_real_photos_on_trained_weights(home: Path, tmp_path: Path) -> None:
    album = tmp_path / "album"
    album.mkdir()
    made = []
    for n, photo in enumerate(
        sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[::50]
    ):  # 20 classes, far apart
        image = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
        original = album / f"{n}.jpg"
        image.save(original, quality=95)
        copies = {
            "resized": image.resize((image.width // 2, image.height // 2)),
            "grey": ImageOps.grayscale(image),
            "crop": image.crop(
                (
                    image.width // 20,
                    image.height // 20,
                    image.width * 19 // 20,
                    image.height * 19 // 20,
                )
            ),
            "turned": image.transpose(Image.Transpose.ROTATE_90),
            "mirror": ImageOps.mirror(image),
        }
        for name, copy in copies.items():
            copy.save(album / f"{n}.{name}.jpg", quality=85)
            os.utime(album / f"{n}.{name}.jpg", (n * 3600, n * 3600))
        os.utime(original, (n * 3600, n * 3600))
        made.append((original, [album / f"{n}.{name}.jpg" for name in copies]))
    settings = load_settings(
        environ={}, home=home, model=REAL_MODEL, backend="torch", precision="fp32"
    )

    once(settings, write=True).index([album])
    with open_library(home) as library:
        groups = find_duplicates(library)
    assert np.mean(_grouped_with_original(groups, made)) >= 0.9
    assert all(len({_photo_of(m.path) for m in g.members}) == 1 for g in groups)
    members = [m.id for g in groups for m in g.members]
    assert len(members) == len(set(members))
