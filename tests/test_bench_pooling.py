"""The pure metric helpers of benchmarks/bench_pooling.py, checked against brute force."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_pooling") as module:
        yield module


def unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.array(rows, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ranks_counts_better_and_tied_allowed_items(bench) -> None:
    gallery = unit([[1, 0], [0.9, 0.1], [0, 1]])
    queries = unit([[0.85, 0.15], [0, 1]])
    ranks = bench.ranks(queries, gallery, np.array([0, 2]), None)
    assert ranks.tolist() == [2, 1]  # item 1 sits closer to the first query than its answer
    allowed = np.array([[True, False, True], [True, True, True]])
    assert bench.ranks(queries, gallery, np.array([0, 2]), allowed).tolist() == [1, 1]
    tied = bench.ranks(unit([[1, 0]]), unit([[1, 0], [1, 0]]), np.array([1]), None)
    assert tied.tolist() == [2]  # a tie counts against the answer


def test_hard_retrieval_hides_siblings_but_not_other_photos_copies(bench) -> None:
    photo0 = unit([[1, 0, 0], [0.8, 0.6, 0], [0.8, 0.6, 0.01]])  # original, two copies
    photo1 = unit([[0, 0, 1], [0, 0.1, 1], [0.7, 0.7, 0.3]])  # its 2nd copy looks like photo0's
    vectors = np.stack([photo0, photo1])
    assert bench.retrieval_ranks(vectors, hard=False).tolist() == [[1, 1], [1, 2]]
    # photo0's copies each lose to photo1's 2nd copy, not to their own sibling
    assert bench.retrieval_ranks(vectors, hard=True).tolist() == [[2, 2], [1, 4]]


def test_pair_metrics_match_brute_force(bench) -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 3)
    vectors = unit((rng.normal(size=(6, 8))[groups] + 0.7 * rng.normal(size=(18, 8))).tolist())
    scores, positive = bench.pair_scores(vectors, groups)
    pairs = list(itertools.combinations(range(18), 2))
    assert len(scores) == len(pairs) and positive.sum() == 6 * 3
    f1, threshold = bench.best_f1(scores, positive)
    brute = max(_f1(*bench.at_threshold(scores, positive, t)) for t in scores)
    assert f1 == pytest.approx(brute)
    assert _f1(*bench.at_threshold(scores, positive, threshold)) == pytest.approx(f1)
    order = np.argsort(-scores)
    hits = np.cumsum(positive[order])
    expected_ap = np.mean([hits[k] / (k + 1) for k in range(len(order)) if positive[order][k]])
    assert bench.average_precision(scores, positive) == pytest.approx(expected_ap)


def test_split_pools_recovers_each_half(bench) -> None:
    cls, mean = unit([[3, 4], [1, 0]]), unit([[0, 2], [1, 1]])
    both = np.concatenate([cls, mean], axis=1) / np.sqrt(2)
    split = bench.split_pools(both)
    np.testing.assert_allclose(split["cls"], cls)
    np.testing.assert_allclose(split["mean"], mean)


def test_every_copy_is_a_jpeg_beside_its_original(bench, tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("L", (40, 30), 128).save(photo)
    group = bench.make_copies(photo, tmp_path)
    assert group[0] == str(photo) and len(group) == 1 + len(bench.TRANSFORMS)
    assert {Image.open(path).format for path in group[1:]} == {"JPEG"}
    assert Image.open(group[1]).size == (20, 15)  # half_q70


def test_precision_at_matches_brute_force(bench) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(12, 5)).tolist())
    relevant = rng.random((12, 12)) < 0.4
    precision, chance = bench.precision_at(vectors, relevant, 3)
    expected, expected_chance = [], []
    for i in range(12):
        others = [j for j in range(12) if j != i]
        nearest = sorted(others, key=lambda j: -float(vectors[i] @ vectors[j]))[:3]
        expected.append(np.mean([relevant[i, j] for j in nearest]))
        expected_chance.append(np.mean([relevant[i, j] for j in others]))
    assert precision == pytest.approx(np.mean(expected))
    assert chance == pytest.approx(np.mean(expected_chance))


def test_cousins_meet_within_two_wordnet_steps_and_kinds_are_broad(bench) -> None:
    from vitsearch.search.hierarchy import imagenet_hierarchy

    hierarchy = imagenet_hierarchy()
    # Labrador, golden retriever (siblings), toy terrier (a dog, but no near kin), sports car
    wnids = ["n02099712", "n02099601", "n02087046", "n04285008"]
    cousins = bench.cousin_matrix(wnids, hierarchy)
    assert cousins[0, 1] and not cousins[0, 2] and not cousins[0, 3]
    assert [bench.kind_of(w, hierarchy) for w in wnids] == ["dog", "dog", "dog", "wheeled vehicle"]
    assert bench.class_of("/x/n02099712_Labrador_retriever.JPEG") == "n02099712"
    assert bench.class_of("/x/holiday.jpg") is None


def test_semantic_counts_neighbours_of_the_same_kind(bench) -> None:
    # twelve dog photos around one direction, twelve car photos around another
    rng = np.random.default_rng(2)
    dogs = ["n02099712", "n02099601", "n02087046", "n02085620", "n02086240", "n02088364"] * 2
    cars = ["n04285008", "n02814533", "n03100240", "n03594945", "n03670208", "n03770679"] * 2
    centres = np.repeat(np.eye(8)[:2], 12, axis=0)
    vectors = unit((centres + 0.1 * rng.normal(size=(24, 8))).tolist())
    found = bench.semantic(vectors, dogs + cars)
    assert found.photos == found.kind_photos == 24
    assert found.kind == pytest.approx(1.0)
    assert found.kind_chance == pytest.approx(11 / 23)
    mixed = bench.semantic(vectors[rng.permutation(24)], dogs + cars)  # kinds no longer cluster
    assert mixed.kind < 0.8
    assert bench.semantic(vectors[:10], dogs[:10]) is None  # too few for precision@10


def test_spread_takes_photos_evenly(bench) -> None:
    photos = [Path(f"{i:02d}.jpg") for i in range(10)]
    assert bench.spread(photos, 4) == [photos[0], photos[3], photos[6], photos[9]]
    assert bench.spread(photos[:3], 4) == photos[:3]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
