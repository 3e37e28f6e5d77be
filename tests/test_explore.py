"""Label search, clusters, duplicates and filters on embeddings with known structure."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import adjusted_rand_index, plant, sphere_groups
from vitsearch.errors import ConfigError, NoSuchLabelError, VitsearchError
from vitsearch.explore.clusters import (
    SILHOUETTE_SAMPLE,
    assign,
    cluster_name,
    clusters,
    common_kind,
    compute_clusters,
    silhouette,
    train_centroids,
)
from vitsearch.explore.duplicates import find_duplicates
from vitsearch.labels.hierarchy import imagenet_hierarchy
from vitsearch.labels.search import label_counts, search_by_label
from vitsearch.records import Filters, Label
from vitsearch.search.query import nearest
from vitsearch.store import open_library

DOG = Label("golden retriever", 0.8)
CAT = Label("tabby, tabby cat", 0.7)
CAR = Label("sports car, sport car", 0.9)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# -- clusters ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, "auto"])
def test_separated_groups_come_back_as_clusters(home: Path, k) -> None:
    vectors, truth = sphere_groups([40, 30, 25, 15])
    ids = plant(home, vectors)
    with open_library(home) as library:
        found = clusters(library, k)
        assert len(found) == 4 and sum(c.size for c in found) == 110
        assignment = library.cluster_of(ids)
    predicted = np.array([assignment[i] for i in ids])
    assert adjusted_rand_index(truth, predicted) >= 0.9


def clusters_of_every_vector(vectors: np.ndarray, k: int | str) -> np.ndarray:
    """Clustering as it was done on the whole matrix in memory: FAISS subsampling it."""
    if k == "auto":
        n, centre = len(vectors), np.sqrt(len(vectors) / 2)
        candidates = sorted(
            {int(np.clip(round(centre * f), 2, 200)) for f in (0.5, 0.75, 1, 1.5, 2)}
        )
        picked = np.random.default_rng(1234).choice(n, SILHOUETTE_SAMPLE, replace=False)
        sample = vectors[np.sort(picked)] if n > SILHOUETTE_SAMPLE else vectors
        scored = [
            (silhouette(sample, assign(sample, train_centroids(vectors, c))[0]), -c)
            for c in candidates
        ]
        k = -max(scored)[1]
    return assign(vectors, train_centroids(vectors, int(k)))[0]


@pytest.mark.parametrize(
    ("sizes", "k"),
    [([400, 300, 300, 200], 3), pytest.param([700, 700, 700], "auto", marks=pytest.mark.slow)],
)
def test_clusters_read_in_chunks_are_those_of_the_whole_matrix(home: Path, sizes, k) -> None:
    # k=3: more photos than k-means trains on (256 per centroid), so FAISS's own subsample is
    # read; auto: more than the silhouette's sample
    vectors, _ = sphere_groups(sizes, spread=0.9, seed=8)
    ids = plant(home, vectors)
    with open_library(home) as library:
        compute_clusters(library, k)
        assignment = library.cluster_of(ids)
    found = np.array([assignment[i] for i in ids])
    expected = clusters_of_every_vector(vectors, k)
    assert len(np.unique(expected)) > 1
    assert adjusted_rand_index(expected, found) == 1.0


def test_clusters_are_named_from_labels_and_stored(home: Path) -> None:
    vectors, truth = sphere_groups([20, 20], seed=3)
    labels = [(DOG, CAT) if g == 0 else (CAR,) for g in truth]
    plant(home, vectors, labels=labels)
    with open_library(home) as library:
        first = clusters(library, 2)
        assert sorted(c.name for c in first) == ["golden retriever", "sports car"]
        assert all(0.9 < c.cohesion <= 1.0 for c in first)
        assert all(len(c.representatives) == 6 for c in first)
        state = library.cluster_state()
        again = clusters(library, 2)
        assert library.cluster_state() == state and again == first  # reused, not recomputed
        clusters(library, 2, recompute=True)
        assert library.cluster_state()["computed_at"] > state["computed_at"]


# five breeds of five dog groups (hunting, spitz, toy, working; the pug is just a dog)
BREEDS = (
    "n02099712 Labrador retriever",
    "n02110958 pug, pug-dog",
    "n02112018 Pomeranian",
    "n02085620 Chihuahua",
    "n02106662 German shepherd, German shepherd dog, German police dog, alsatian",
)


# what real-vit-tiny's most frequent top labels were in a cluster of 101 photos of 90 classes
MIXED_LABELS = {
    "n02769748 backpack": 14,
    "n04133789 sandal": 8,
    "n02669723 academic gown": 8,
    "unknown_170": 7,
    "n03980874 poncho": 6,
    **{f"n0{i:08d} other": 1 for i in range(58)},
}


def test_a_cluster_of_many_breeds_is_named_by_its_kind(home: Path) -> None:
    vectors, truth = sphere_groups([20, 20, 20], seed=6)
    dogs = iter([BREEDS[0]] * 6 + [b for b in BREEDS[1:] for _ in range(3)] + ["unknown_30"] * 2)
    things = iter(["backpack", "sandal", "poncho", "red wine", "daisy"] * 4)
    groups = [
        lambda: (Label(next(dogs), 0.6),),
        lambda: (CAR,),
        lambda: (Label(next(things), 0.5),),
    ]
    plant(home, vectors, labels=[groups[g]() for g in truth])
    with open_library(home) as library:
        names = sorted(c.name for c in clusters(library, 3))
    # 30% Labradors: the kind alone is true of them; one label alone needs no kind
    assert names == ["dog", "mixed", "sports car"]


def test_a_label_names_a_cluster_only_when_most_of_it_has_it() -> None:
    assert cluster_name(MIXED_LABELS, 101) == "mixed"  # was "backpack", true of none
    assert cluster_name({"n04507155 umbrella": 14, "daisy": 4}, 20) == "umbrella · daisy"
    assert cluster_name({"n04507155 umbrella": 13, "daisy": 7}, 20) == "mixed"
    labradors = {BREEDS[0]: 14, BREEDS[1]: 3, BREEDS[2]: 3}
    assert cluster_name(labradors, 20) == "Labrador retriever"
    assert cluster_name({BREEDS[0]: 13, BREEDS[1]: 7}, 20) == "dog"  # not 65% Labradors


def test_cluster_names_skip_placeholders_and_keep_capitals() -> None:
    assert cluster_name({"LABEL_3": 6, "n04507155 umbrella": 14}, 20) == "umbrella"
    # the placeholders' photos are not umbrellas: 60% is no name
    assert cluster_name({"unknown_170": 8, "n04507155 umbrella": 12}, 20) == "mixed"
    assert cluster_name({"unknown_170": 9, "LABEL_3": 2}, 20) == ""  # -> "cluster N"
    assert cluster_name({"n02099712 Labrador retriever": 14, "CD player": 5}, 20) == (
        "Labrador retriever · CD player"
    )


def test_common_kind_is_the_narrowest_that_holds_most() -> None:
    retrievers = {"n02099712 Labrador retriever": 5, "n02099601 golden retriever": 5}
    assert common_kind(retrievers, 10) == "retriever"
    some_retrievers = {"n02099712 Labrador retriever": 2, "n02099601 golden retriever": 3}
    assert common_kind({**some_retrievers, "n02088364 beagle": 5}, 10) == "hunting dog"
    assert common_kind({label: 3 for label in BREEDS}, 15) == "dog"
    # no narrow kind holds a dog, a car and a pizza; one label alone needs none
    mixed = {BREEDS[0]: 4, "sports car, sport car": 4, "pizza, pizza pie": 4}
    assert common_kind(mixed, 12) is None
    assert common_kind({BREEDS[0]: 7, BREEDS[1]: 3}, 10) is None
    assert common_kind({"my cat Tom": 5, "my cat Ann": 5}, 10) is None  # not ImageNet labels


def test_of_kinds_over_the_same_classes_the_lowest_names_them() -> None:
    table = imagenet_hierarchy()
    for kind, name in [("n01662784", "turtle"), ("n02274259", "butterfly")]:
        members = {table.names[w]: 2 for w in table.classes if kind in table.ancestors[w]}
        assert common_kind(members, 2 * len(members)) == name  # not "anapsid", "lepidopterous"


def test_representatives_of_many_clusters_are_each_clusters_closest_photos(home: Path) -> None:
    """150 clusters, more than one statement reads: each card shows its cluster's first page,
    and a photo deleted since the clustering drops out of its card."""
    vectors, _ = sphere_groups([8] * 150, dim=64, spread=0.05, seed=6)
    ids = plant(home, vectors)
    with open_library(home, write=True) as library:
        compute_clusters(library, 150)
        closest = library.cluster_members(library.clusters()[0][0], 0, 1)[0]
        library.delete([closest.id])
        cards = library.cluster_representatives(3)
        sizes = {cluster: size for cluster, _name, size, _cohesion in library.clusters()}
        assert len(cards) == len(sizes) > 100 and len(ids) == 1200
        for cluster, shown in cards.items():
            assert shown == library.cluster_members(cluster, 0, 3)
            assert closest.id not in {hit.id for hit in shown}
        assert sum(map(len, cards.values())) == sum(min(3, n) for n in sizes.values()) - 1


def test_clusters_recomputed_when_library_grew(home: Path) -> None:
    vectors, _ = sphere_groups([20, 20], seed=4)
    plant(home, vectors)
    with open_library(home) as library:
        clusters(library, 2)
        before = library.cluster_state()
    plant(home, sphere_groups([10], seed=5)[0], folder="/more")
    with open_library(home) as library:
        clusters(library, 2)
        assert library.cluster_state()["count"] == 50 != before["count"]


def test_clusters_named_by_older_rules_are_named_again(home: Path) -> None:
    vectors, _ = sphere_groups([20, 20], seed=4)
    things = ["backpack", "daisy", "red wine"]
    plant(home, vectors, labels=[(Label(things[i % 3], 0.5),) for i in range(40)])
    with open_library(home) as library:
        assert sorted(c.name for c in clusters(library, 2)) == ["mixed", "mixed"]
    with sqlite3.connect(home / "derived.sqlite3") as db:  # as the previous version left it
        state = json.loads(
            db.execute("SELECT value FROM meta WHERE key = 'clusters'").fetchone()[0]
        )
        del state["naming"]
        db.execute("UPDATE meta SET value = ? WHERE key = 'clusters'", (json.dumps(state),))
        db.execute("UPDATE clusters SET name = 'backpack'")
    with open_library(home) as library:
        assert sorted(c.name for c in clusters(library, 2)) == ["mixed", "mixed"]


def test_two_photos_cluster_and_one_refuses(home: Path) -> None:
    plant(home, unit(np.eye(8)[:1]))
    with open_library(home) as library, pytest.raises(VitsearchError, match="at least 2"):
        compute_clusters(library)
    plant(home, unit(np.eye(8)[1:2]), folder="/b")
    with open_library(home) as library:
        found = clusters(library)
        assert sum(c.size for c in found) == 2


def test_silhouette_matches_the_definition() -> None:
    vectors, truth = sphere_groups([12, 9, 7], spread=0.8, seed=2)
    distances = 1 - vectors.astype(np.float64) @ vectors.T
    values = []
    for i, own in enumerate(truth):
        same = (truth == own) & (np.arange(len(truth)) != i)
        a = distances[i, same].mean()
        b = min(distances[i, truth == g].mean() for g in set(truth) - {own})
        values.append((b - a) / max(a, b))
    assert silhouette(vectors, truth) == pytest.approx(np.mean(values), abs=1e-6)


# -- duplicates -------------------------------------------------------------------------


def test_duplicate_tiers(home: Path) -> None:
    rng = np.random.default_rng(1)
    base = unit(rng.standard_normal((6, 32)))
    near_copy = unit(base[0] + 0.05 * unit(rng.standard_normal(32)))  # cosine ~0.999
    burst_shot = unit(base[1] + 0.5 * unit(rng.standard_normal(32)))  # cosine ~0.89
    late_shot = unit(base[2] + 0.5 * unit(rng.standard_normal(32)))  # similar, but an hour later
    vectors = np.vstack([base, near_copy, burst_shot, late_shot, base[3]])
    assert (near_copy @ base[0]) > 0.95 and 0.85 < (burst_shot @ base[1]) < 0.95
    taken = [0, 100, 200, 300, 400, 500, 1, 105, 200 + 3600, 400]
    hashes = [f"h{i}" for i in range(9)] + ["h3"]  # the last is a byte copy of photo 3
    sizes = [(64, 48)] * 6 + [(128, 96), (64, 48), (64, 48), (64, 48)]
    ids = plant(home, vectors, taken_at=taken, hashes=hashes, sizes=sizes)
    with open_library(home) as library:
        groups = find_duplicates(library)
    by_kind = {(g.kind, frozenset(m.id for m in g.members)): g for g in groups}
    assert set(by_kind) == {
        ("exact", frozenset({ids[3], ids[9]})),
        ("near", frozenset({ids[0], ids[6]})),
        ("burst", frozenset({ids[1], ids[7]})),
    }
    assert by_kind[("near", frozenset({ids[0], ids[6]}))].keeper.id == ids[6]  # larger
    assert by_kind[("burst", frozenset({ids[1], ids[7]}))].keeper.id == ids[1]  # older


def test_threshold_moves_the_cut(home: Path) -> None:
    rng = np.random.default_rng(2)
    a = unit(rng.standard_normal(16))
    b = unit(a + 0.8 * unit(rng.standard_normal(16)))
    plant(home, np.vstack([a, b]))
    cosine = float(a @ b)
    with open_library(home) as library:
        assert find_duplicates(library, ("near",)) == []
        loose = find_duplicates(library, ("near",), threshold=cosine - 0.01)
        assert len(loose) == 1 and loose[0].similarity == pytest.approx(cosine, abs=1e-5)
        with pytest.raises(ConfigError, match="exactly one --kind"):
            find_duplicates(library, ("near", "burst"), threshold=0.5)


def test_planted_groups_at_scale_are_found_without_false_pairs(home: Path) -> None:
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal((2000, 64)))
    copies = unit(base[:50] + 0.03 * rng.standard_normal((50, 64)))
    ids = plant(home, np.vstack([base, copies]))
    with open_library(home) as library:
        groups = find_duplicates(library, ("near",))
    expected = {frozenset({ids[i], ids[2000 + i]}) for i in range(50)}
    assert {frozenset(m.id for m in g.members) for g in groups} == expected


# -- filters ----------------------------------------------------------------------------


def test_folder_and_date_filters_still_return_k(home: Path) -> None:
    vectors, _ = sphere_groups([60], seed=7)
    days = [1_700_000_000 + 86400 * i for i in range(60)]
    paths = [f"/photos/{'a' if i % 3 == 0 else 'b'}/p{i}.jpg" for i in range(60)]
    ids = plant(home, vectors, taken_at=days, paths=paths)
    with open_library(home) as library:
        query = vectors[1]  # lives in folder b
        in_a = nearest(library, query, 5, Filters(under="/photos/a"))
        assert len(in_a) == 5 and all(h.path.startswith("/photos/a/") for h in in_a)
        window = Filters(after=days[10], before=days[20])
        dated = nearest(library, query, 8, window)
        allowed = {ids[i] for i in range(10, 20)}
        assert len(dated) == 8 and {h.id for h in dated} <= allowed
        both = nearest(
            library, query, 50, Filters(under="/photos/a", after=days[10], before=days[20])
        )
        assert {h.id for h in both} == {ids[i] for i in range(10, 20) if i % 3 == 0}
        top = nearest(library, query, 60)
        floor = top[10].score
        assert all(h.score >= floor for h in nearest(library, query, 60, Filters(min_score=floor)))


def test_label_search_with_filters(home: Path) -> None:
    vectors, _ = sphere_groups([4], seed=8)
    labels = [
        (Label("tabby, tabby cat", 0.9),),
        (Label("tabby, tabby cat", 0.6),),
        (Label("Egyptian cat", 0.7),),
        (Label("golden retriever", 0.8),),
    ]
    paths = ["/photos/a/1.jpg", "/photos/b/2.jpg", "/photos/a/3.jpg", "/photos/a/4.jpg"]
    plant(home, vectors, labels=labels, paths=paths)
    with open_library(home) as library:
        hits = search_by_label(library, "CAT", k=10)
        assert [h.path for h in hits] == ["/photos/a/1.jpg", "/photos/a/3.jpg", "/photos/b/2.jpg"]
        assert [h.path for h in search_by_label(library, "tabby cat", 10)] == [
            "/photos/a/1.jpg",
            "/photos/b/2.jpg",
        ]
        assert [
            h.path for h in search_by_label(library, "cat", 10, Filters(under="/photos/b"))
        ] == ["/photos/b/2.jpg"]
        assert [h.path for h in search_by_label(library, "cat", 10, Filters(min_score=0.65))] == [
            "/photos/a/1.jpg",
            "/photos/a/3.jpg",
        ]
        with pytest.raises(NoSuchLabelError, match=r"did you mean: .*golden"):
            search_by_label(library, "goldne", 10)
        assert (label_counts(library)[0].label, label_counts(library)[0].top) == (
            "tabby, tabby cat",
            2,
        )
        assert search_by_label(library, "retriever", 10)[0].path == "/photos/a/4.jpg"
        with pytest.raises(NoSuchLabelError):
            search_by_label(library, "tab", 10)  # not a whole word


def test_remembered_filter_sees_new_photos(home: Path) -> None:
    vectors, _ = sphere_groups([10], seed=9)
    plant(home, vectors, folder="/photos/a")
    with open_library(home) as reader:
        first = nearest(reader, vectors[0], 50, Filters(under="/photos/a"))
        assert len(first) == 10
        plant(home, sphere_groups([5], seed=10)[0], folder="/photos/a/new")  # another writer
        reader.refresh()
        again = nearest(reader, vectors[0], 50, Filters(under="/photos/a"))
        assert len(again) == 15
