"""Label search by the kinds of thing people type ("dog" finds every breed), and labels shown as
people read them (no WordNet ids)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    IMAGENET_SAMPLE,
    NO_REAL_MODEL,
    NO_SAMPLE,
    REAL_MODEL,
    TINY_LABELS,
    WORDNET,
    once,
    plant,
    script_module,
    sphere_groups,
    vitsearch,
)
from vitsearch.errors import NoSuchLabelError
from vitsearch.explore.clusters import cluster_name
from vitsearch.labels.hierarchy import TABLE, hierarchy_from_table, imagenet_hierarchy
from vitsearch.labels.search import (
    MIN_LABEL_SCORE,
    label_counts,
    labels_for_query,
    matching_labels,
    search_by_label,
    suggest,
)
from vitsearch.records import Filters, Hit, Label, display_label, short_label, split_wnid
from vitsearch.store import open_library

ROOT = Path(__file__).resolve().parents[1]
DOG = "n02084071"  # dog, domestic dog, Canis familiaris

# Labels as real-vit-tiny writes them: "<wnid> <name>".
LAB, GOLDEN, BEAGLE = (
    "n02099712 Labrador retriever",
    "n02099601 golden retriever",
    "n02088364 beagle",
)
TABBY, LION = "n02123045 tabby", "n02129165 lion"
HOTDOG, SPORTS = "n07697537 hotdog", "n04285008 sports car"
FREIGHT, WHEEL = "n03393912 freight car", "n02974003 car wheel"

PHOTOS = {  # path -> the model's top labels
    "/photos/a/three-breeds.jpg": [(LAB, 0.3), (GOLDEN, 0.2), (BEAGLE, 0.1), (TABBY, 0.05)],
    "/photos/b/one-breed.jpg": [(GOLDEN, 0.5), (LION, 0.2)],
    "/photos/a/hotdog.jpg": [(HOTDOG, 0.9)],
    "/photos/a/cat.jpg": [(TABBY, 0.7), (LION, 0.1)],
    "/photos/a/lion.jpg": [(LION, 0.8), (TABBY, 0.1)],
    "/photos/a/sports.jpg": [(SPORTS, 0.6), (WHEEL, 0.3)],
    "/photos/a/wheel.jpg": [(WHEEL, 0.9)],
    "/photos/a/train.jpg": [(FREIGHT, 0.7)],
}


def load_script():
    return script_module("make_label_hierarchy")


def plant_photos(home: Path, photos: dict[str, list[tuple[str, float]]]) -> None:
    vectors, _ = sphere_groups([len(photos)], seed=5)
    labels = [tuple(Label(text, score) for text, score in ls) for ls in photos.values()]
    plant(home, vectors, labels=labels, paths=list(photos))


def paths(hits: list[Hit]) -> list[str]:
    return [Path(h.path).stem for h in hits]


# -- the table ------------------------------------------------------------------------------


def test_table_maps_imagenet_classes_to_their_ancestors() -> None:
    table = imagenet_hierarchy()
    assert len(table.classes) == 1000 and table.classes[0] == "n01440764"  # tench, index 0
    assert list(table.classes) == sorted(table.classes)
    labrador = {table.names[w] for w in table.ancestors["n02099712"]}
    assert "dog, domestic dog, Canis familiaris" in labrador and "retriever" in labrador
    assert DOG in table.ancestors_of(LAB)
    assert table.wnid_of("tabby, tabby cat") == "n02123045"  # google/vit's id2label text
    assert table.wnid_of("n02123045") == "n02123045"
    assert table.wnid_of("crane") is None  # the bird and the machine: not a guess
    assert table.wnid_of("receipt") is None and table.wnid_of("n99999999 nothing") is None
    assert {table.wnid_of(label) for label in TINY_LABELS.values()} <= set(table.classes)


def test_table_is_small_carries_the_wordnet_licence_and_is_package_data() -> None:
    path = ROOT / "vitsearch" / "labels" / TABLE
    assert path.stat().st_size < 300_000
    table = json.loads(path.read_text(encoding="utf-8"))
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in table["licence"]
    assert "labels/imagenet_hierarchy.json" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.skipif(not WORDNET.is_dir(), reason=f"no WordNet folder at {WORDNET}")
def test_shipped_table_is_what_the_script_makes(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    shipped = ROOT / "vitsearch" / "labels" / TABLE
    out.write_text(shipped.read_text(encoding="utf-8"))  # its classes are kept
    load_script().main([str(WORDNET), "--out", str(out)])
    assert out.read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8")


def test_script_builds_a_table_from_a_wordnet_folder(tmp_path: Path) -> None:
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    (wordnet / "words.txt").write_text(
        "n00000001\tentity\nn00000002\tanimal, beast\nn00000003\tdog, domestic dog\n"
        "n00000004\tpet\nn00000010\tbeagle\nn00000011\tpug, pug-dog\nn00000020\ttabby, tabby cat\n"
        "n00000099\tunrelated\n"
    )
    edges = [(1, 2), (2, 3), (3, 10), (3, 11), (4, 11), (2, 20), (1, 99)]  # pug: two parents
    (wordnet / "wordnet.is_a.txt").write_text(
        "".join(f"n{p:08d} n{c:08d}\n" for p, c in edges) + "malformed line here\n"
    )
    photos = tmp_path / "sample"
    photos.mkdir()
    for name in ("n00000020_tabby.JPEG", "n00000010_beagle.JPEG", "n00000011_pug.JPEG"):
        (photos / name).write_bytes(b"")
    out = tmp_path / "table.json"
    script = load_script()
    assert script.main([str(wordnet), "--classes", str(photos), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["classes"] == ["n00000010", "n00000011", "n00000020"]  # sorted wnids
    assert "n00000099" not in table["names"]  # only the classes' ancestors
    hierarchy = hierarchy_from_table(table)
    assert hierarchy.ancestors["n00000011"] == {"n00000001", "n00000002", "n00000003", "n00000004"}
    assert labels_for_query("dog", ["beagle", "pug, pug-dog", "tabby, tabby cat"], hierarchy) == [
        "beagle",
        "pug, pug-dog",
    ]
    (tmp_path / "order.txt").write_text("n00000020\nn00000010\n")
    script.main([str(wordnet), "--classes", str(tmp_path / "order.txt"), "--out", str(out)])
    assert json.loads(out.read_text())["classes"] == ["n00000020", "n00000010"]  # as given
    script.main([str(wordnet), "--out", str(out)])  # no --classes: the table's own are kept
    assert json.loads(out.read_text())["classes"] == ["n00000020", "n00000010"]


# -- search by kind --------------------------------------------------------------------------


def test_dog_finds_every_breed_ranked_by_summed_probability(home: Path) -> None:
    plant_photos(home, PHOTOS)
    with open_library(home) as library:
        hits = search_by_label(library, "dog", k=10)
        assert paths(hits) == ["three-breeds", "one-breed"]  # not the hot dog
        assert [h.score for h in hits] == pytest.approx([0.6, 0.5])
        assert paths(search_by_label(library, "Dogs", 10)) == ["three-breeds", "one-breed"]
        assert paths(search_by_label(library, DOG, 10)) == ["three-breeds", "one-breed"]
        assert paths(search_by_label(library, "dog", 1)) == ["three-breeds"]
        under_b = search_by_label(library, "dog", 10, Filters(under="/photos/b"))
        assert paths(under_b) == ["one-breed"]
        assert paths(search_by_label(library, "dog", 10, Filters(min_score=0.55))) == [
            "three-breeds"
        ]
        assert paths(search_by_label(library, "retriever", 10)) == ["three-breeds", "one-breed"]
        assert [h.score for h in search_by_label(library, "retriever", 10)] == pytest.approx(
            [0.5, 0.5]
        )


def test_direct_label_matches_still_work(home: Path) -> None:
    plant_photos(home, PHOTOS)
    with open_library(home) as library:
        assert paths(search_by_label(library, "golden retriever", 10)) == [
            "one-breed",
            "three-breeds",
        ]
        assert paths(search_by_label(library, "labrador", 10)) == ["three-breeds"]
        assert paths(search_by_label(library, "n02099712 Labrador retriever", 10)) == [
            "three-breeds"
        ]
        assert paths(search_by_label(library, "n02099712", 10)) == ["three-breeds"]
        assert paths(search_by_label(library, "hot dog", 10)) == ["hotdog"]
        assert paths(search_by_label(library, "car wheel", 10)) == ["wheel", "sports"]


def test_cat_means_house_cats_and_car_means_cars(home: Path) -> None:
    plant_photos(home, PHOTOS)
    with open_library(home) as library:
        cats = search_by_label(library, "cat", 10)
        assert paths(cats) == ["cat", "lion", "three-breeds"]  # by their tabby share only
        assert [h.score for h in cats] == pytest.approx([0.7, 0.1, 0.05])
        assert paths(search_by_label(library, "big cat", 10)) == ["lion", "one-breed", "cat"]
        cars = search_by_label(library, "car", 10)
        assert paths(cars) == ["train", "sports"]  # automobile and railway car, no car wheel
        assert paths(search_by_label(library, "vehicle", 10)) == ["train", "sports"]
        assert paths(search_by_label(library, "food", 10)) == ["hotdog"]


def test_no_match_suggests_kinds_with_their_counts(home: Path) -> None:
    plant_photos(home, PHOTOS)
    with open_library(home) as library:
        with pytest.raises(
            NoSuchLabelError, match=r"no label 'doog'.*did you mean: dog \(3 kinds\)"
        ):
            search_by_label(library, "doog", 10)
        with pytest.raises(NoSuchLabelError, match=r"golden"):
            search_by_label(library, "goldne", 10)


def test_all_imagenet_classes_as_the_library_labels() -> None:
    table = imagenet_hierarchy()
    labels = [table.names[w] for w in table.classes]  # google/vit-base-patch16-224's id2label
    dogs = labels_for_query("dog", labels)
    assert len(dogs) == 121 and "hotdog, hot dog, red hot" not in dogs  # 118 breeds, 3 wild dogs
    assert "dingo, warrigal, warragal, Canis dingo" in dogs
    assert "Labrador retriever" in dogs and "Chihuahua" in dogs
    cats = labels_for_query("cat", labels)
    assert "tabby, tabby cat" in cats and "Persian cat" in cats
    assert "lion, king of beasts, Panthera leo" not in cats
    assert "lion, king of beasts, Panthera leo" in labels_for_query("big cat", labels)
    cars = labels_for_query("car", labels)
    assert {
        "sports car, sport car",
        "cab, hack, taxi, taxicab",
        "convertible",
        "jeep, landrover",
    } < set(cars)
    assert "car wheel" not in cars and "freight car" in cars
    assert len(labels_for_query("bird", labels)) >= 55
    assert "goldfish, Carassius auratus" in labels_for_query("fish", labels)
    assert "pizza, pizza pie" in labels_for_query("food", labels)
    assert len(labels_for_query("object", labels)) > 900  # generic words name nearly everything
    assert suggest("doog", labels)[0] == "dog (121 kinds)"
    assert "school bus" in labels_for_query("vehicle", labels)  # "bus, ..., passenger vehicle"
    trucks = labels_for_query("truck", labels)
    assert "fire engine, fire truck" in trucks and "broccoli" not in trucks  # not "garden truck"


def test_other_checkpoints_keep_plain_matching(home: Path) -> None:
    labels = ["receipt", "whiteboard, board", "my cat", "cat food", "LABEL_3", "unknown_7"]
    for query in ("cat", "board", "food", "receipt", "my cat", "dog", "label 3"):
        assert labels_for_query(query, labels) == matching_labels(query, labels)
    plant_photos(home, {f"/photos/{i}.jpg": [(label, 0.5)] for i, label in enumerate(labels)})
    with open_library(home) as library:
        assert paths(search_by_label(library, "cat", 10)) == ["2", "3"]
        with pytest.raises(NoSuchLabelError, match="no label 'dog'"):
            search_by_label(library, "dog", 10)


def test_sums_stay_within_one_source(home: Path) -> None:
    plant_photos(home, PHOTOS)
    with open_library(home, write=True) as library:
        ids = [library.file_at("/photos/a/three-breeds.jpg").id]
        cid = library.save_classifier("pets", b"", ["dog"], None, "planted:1")
        library.write_custom_labels(cid, ids, [Label("dog", 0.55, "custom:pets")])
    with open_library(home) as library:
        hits = search_by_label(library, "dog", 10)
        assert paths(hits) == ["three-breeds", "one-breed"]
        assert hits[0].score == pytest.approx(0.6)  # the model's 0.6, not 0.6 + 0.55
        best = library.best_with_labels([LAB, GOLDEN, BEAGLE], Filters(), 10)
        assert [h.score for h in best] == pytest.approx([0.5, 0.3])  # the default: best label


# real-vit-tiny's labels for fish and birds; the photos' other labels are not of those kinds
GOLDFISH, STORK, PENGUIN = "n01443537 goldfish", "n02002724 black stork", "n02056570 king penguin"
WEAK = {  # path -> the model's top labels, as real-vit-tiny gave them on ImageNet photos
    "/photos/goldfish.jpg": [(GOLDFISH, 0.999)],
    "/photos/barracouta.jpg": [("unknown_170", 0.35), (GOLDFISH, 0.21)],
    "/photos/strawberry.jpg": [("n07768694 pomegranate", 0.4), (GOLDFISH, 0.046)],
    "/photos/grocery.jpg": [("n02666196 abacus", 0.6), (GOLDFISH, 0.015)],
    "/photos/pinwheel.jpg": [("n04507155 umbrella", 0.98), (GOLDFISH, 0.001)],
    "/photos/barrel.jpg": [("n04507155 umbrella", 0.99), (GOLDFISH, 0.0002), (STORK, 0.0001)],
    "/photos/crane.jpg": [(PENGUIN, 0.465), (STORK, 0.211), ("n02058221 albatross", 0.018)],
    "/photos/stork.jpg": [(STORK, 0.6)],
}


def test_matches_under_the_floor_are_left_out_not_padded_in(home: Path) -> None:
    plant_photos(home, WEAK)
    with open_library(home) as library:
        fish = search_by_label(library, "fish", 20)  # returned 6 at 0.001 and 0.0002 too
        assert paths(fish) == ["goldfish", "barracouta", "strawberry"]
        assert min(h.score for h in fish) >= MIN_LABEL_SCORE
        assert paths(search_by_label(library, "fish", 20, Filters(min_score=0.1))) == [
            "goldfish",
            "barracouta",
        ]
        birds = search_by_label(library, "bird", 20)  # summed: 0.694 beats one label at 0.6
        assert paths(birds) == ["crane", "stork"]
        assert birds[0].score == pytest.approx(0.694)


def test_only_birds_are_kinds_of_bird_and_only_fish_of_fish() -> None:
    table = imagenet_hierarchy()
    labels = [table.names[w] for w in table.classes]  # google/vit-base-patch16-224's id2label
    for query, wnid in [("bird", "n01503061"), ("fish", "n02512053")]:
        under = {table.names[w] for w in table.classes if wnid in table.ancestors[w]}
        found = set(labels_for_query(query, labels))
        # "crane" names the bird and the machine: mapped to neither
        assert found == under - {"crane"}, query
    assert not {
        label for label in labels_for_query("bird", labels) if DOG in table.ancestors_of(label)
    }
    tiny = [f"{w} {table.names[w].split(',')[0]}" for w in table.classes]  # as real-vit-tiny's
    assert all("n01503061" in table.ancestors_of(x) for x in labels_for_query("bird", tiny))


# -- labels as people read them -------------------------------------------------------------


def test_display_strips_wnids_and_keeps_capitals(home: Path) -> None:
    assert split_wnid(LAB) == ("n02099712", "Labrador retriever")
    assert split_wnid("tabby, tabby cat") == (None, "tabby, tabby cat")
    assert display_label(LAB) == "Labrador retriever" and display_label("unknown_3") == "unknown_3"
    assert short_label("tabby, tabby cat") == "tabby"
    assert short_label("n02110958 pug, pug-dog") == "pug"
    assert Label(LAB, 0.25).as_dict() == {
        "label": "Labrador retriever",
        "score": 0.25,
        "wnid": "n02099712",
    }
    assert Label("tabby, tabby cat", 0.5).as_dict() == {"label": "tabby, tabby cat", "score": 0.5}
    assert cluster_name({LAB: 7, "n02085620 Chihuahua": 3, BEAGLE: 1}, 10) == (
        "Labrador retriever · Chihuahua"
    )
    plant_photos(home, PHOTOS)
    with open_library(home) as library:
        counted = {c.as_dict()["label"]: c.as_dict() for c in label_counts(library)}
        assert counted["Labrador retriever"]["wnid"] == "n02099712"


@pytest.mark.slow
def test_cli_shows_labels_without_wnids(home: Path) -> None:
    plant_photos(home, PHOTOS)
    env = {
        **os.environ,
        "VITSEARCH_HOME": str(home),
        "VITSEARCH_BACKEND": "torch",
        "VITSEARCH_PRECISION": "fp32",
    }
    shown = vitsearch("search", "--label", "dog", env=env).stdout
    assert "three-breeds.jpg  Labrador retriever (30%), golden retriever (20%)" in shown
    assert "n0" not in shown
    listed = vitsearch("labels", env=env).stdout
    assert "Labrador retriever" in listed and "n02099712" not in listed
    found = json.loads(vitsearch("search", "--label", "dogs", "--json", env=env).stdout)
    assert found[0]["labels"][0] == {
        "label": "Labrador retriever",
        "score": 0.3,
        "wnid": "n02099712",
    }
    missing = vitsearch("search", "--label", "doog", env=env, check=False)
    assert missing.returncode != 0 and "dog (3 kinds)" in missing.stderr


# -- on real weights ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.skipif(not REAL_MODEL, reason=NO_REAL_MODEL)
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=NO_SAMPLE)
def test_dog_search_on_real_photos_reaches_the_models_own_precision(tmp_path: Path) -> None:
    from vitsearch.config import load_settings

    table = imagenet_hierarchy()
    photos = sorted(IMAGENET_SAMPLE.glob("n*.JPEG"))
    dogs = [p for p in photos if DOG in table.ancestors.get(p.name[:9], ())]
    others = [p for p in photos if p not in dogs]
    chosen = random.Random(0).sample(dogs, 40) + random.Random(1).sample(others, 110)
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in chosen:
        (folder / photo.name).symlink_to(photo)
    settings = load_settings(
        environ={}, home=tmp_path / "home", model=REAL_MODEL, backend="torch", precision="fp32"
    )
    once(settings, write=True).index([folder])

    def is_dog(hit: Hit) -> bool:  # the true class is in the file name
        return DOG in table.ancestors.get(Path(hit.path).name[:9], ())

    with open_library(settings.home) as library:
        ids = [int(i) for i in library.filtered_ids(Filters())]
        everything = library.hits(ids, [0.0] * len(ids))
        top1 = [h for h in everything if h.labels and DOG in table.ancestors_of(h.labels[0].label)]
        ceiling = sum(map(is_dog, top1)) / len(top1)
        hits = search_by_label(library, "dog", k=len(top1))
    precision = sum(map(is_dog, hits)) / len(top1)
    print(f"dog: P@{len(top1)} {precision:.2f}, top-1 ceiling {ceiling:.2f}")
    assert len(top1) >= 15
    assert precision >= ceiling - 0.05
    assert np.mean([is_dog(h) for h in hits[:10]]) >= 0.9
