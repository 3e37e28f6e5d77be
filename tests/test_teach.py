"""Your own labels: a classifier taught on stored embeddings labels the library with no forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FakeEmbedder, sphere_groups
from vitsearch.config import load_settings
from vitsearch.errors import VitsearchError
from vitsearch.indexer import Indexer
from vitsearch.search import search_by_label
from vitsearch.store import open_library
from vitsearch.teach import LinearClassifier, teach_folder, train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def solid(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (48, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def colour_folder(
    root: Path, per_class: int, start: int = 0, prefix: str = ""
) -> dict[str, list[Path]]:
    return {
        name: [
            solid(root / name / f"{prefix}{name}{i}.png", rgb, start + 100 * n + i)
            for i in range(per_class)
        ]
        for n, (name, rgb) in enumerate(COLOURS.items())
    }


class Counting:
    def __init__(self, embedder: FakeEmbedder) -> None:
        self.embedder = embedder
        self.loads = 0

    def __call__(self) -> FakeEmbedder:
        self.loads += 1
        return self.embedder


def index(home: Path, folder: Path, embedder: FakeEmbedder):
    with open_library(home, write=True) as library:
        return Indexer(library, lambda: embedder, batch_size=8).reconcile([folder])


def test_train_separates_and_calibrates() -> None:
    vectors, truth = sphere_groups([40, 40, 40], dim=32, spread=0.5, seed=1)
    classifier, accuracy = train(vectors, truth, ("a", "b", "c"))
    assert accuracy is not None and accuracy >= 0.95
    best, scores = classifier.top(vectors)
    assert (best == truth).mean() >= 0.95
    assert np.all((scores > 0) & (scores <= 1)) and classifier.temperature > 0
    again = LinearClassifier.from_bytes(classifier.to_bytes())
    assert np.allclose(again.probabilities(vectors), classifier.probabilities(vectors))
    assert again.classes == ("a", "b", "c")


def test_teach_labels_library_without_model_forward(
    home: Path, tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    library_photos = colour_folder(tmp_path / "photos", 8)
    index(home, tmp_path / "photos", fake_embedder)
    examples = tmp_path / "examples"
    for name, paths in library_photos.items():  # 5 examples already in the library ...
        for path in paths[:5]:
            (examples / name).mkdir(parents=True, exist_ok=True)
            (examples / name / path.name).symlink_to(path)
    colour_folder(examples, 2, start=50, prefix="new-")  # ... and 2 new ones per class
    forwards_before = fake_embedder.images_embedded
    counting = Counting(fake_embedder)
    with open_library(home, write=True) as library:
        result = teach_folder(library, counting, examples, "colours")
    assert result.classes == {"blue": 7, "green": 7, "red": 7}
    assert result.labelled == 24
    assert result.embedded == 6 and fake_embedder.images_embedded - forwards_before == 6
    assert result.held_out_accuracy is not None and result.held_out_accuracy >= 0.9
    with open_library(home) as library:
        hits = search_by_label(library, "red", k=50)  # also matches the model's "red wine"
        assert {h.path for h in hits[:8]} == {str(p) for p in library_photos["red"]}
        assert all(h.score > 0.9 for h in hits[:8]) and all(h.score < 0.9 for h in hits[8:])
        custom = [lab for lab in hits[0].labels if lab.custom]
        assert custom[0].label == "red" and custom[0].source == "custom:colours"
        assert hits[0].labels[0] == custom[0]  # taught labels come first
        assert hits[0].as_dict()["labels"][0]["custom"] == "colours"


def test_new_photos_get_taught_labels_and_remove_clears(
    home: Path, tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    colour_folder(tmp_path / "photos", 6)
    index(home, tmp_path / "photos", fake_embedder)
    colour_folder(tmp_path / "examples", 6, start=70)
    with open_library(home, write=True) as library:
        teach_folder(library, lambda: fake_embedder, tmp_path / "examples", "colours")
    solid(tmp_path / "photos" / "late" / "late-green.png", COLOURS["green"], 999)
    index(home, tmp_path / "photos", fake_embedder)
    with open_library(home) as library:
        late = library.db.file_at(str(tmp_path / "photos" / "late" / "late-green.png"))
        labels = library.db.embedding(late.id)[1]
        assert labels[0].label == "green" and labels[0].custom
        assert library.db.remove_classifier("colours")
        assert not search_by_label_or_none(library, "green")


def search_by_label_or_none(library, text: str):
    try:
        return search_by_label(library, text, 10)
    except VitsearchError:
        return None


def test_teach_needs_two_labels(home: Path, tmp_path: Path, fake_embedder) -> None:
    colour_folder(tmp_path / "photos", 2)
    index(home, tmp_path / "photos", fake_embedder)
    (tmp_path / "one" / "only").mkdir(parents=True)
    solid(tmp_path / "one" / "only" / "a.png", (1, 2, 3), 1)
    with (
        open_library(home, write=True) as library,
        pytest.raises(VitsearchError, match="at least 2"),
    ):
        teach_folder(library, lambda: fake_embedder, tmp_path / "one")


@pytest.mark.slow
def test_teach_through_the_app_with_the_tiny_vit(
    home: Path, tmp_path: Path, tiny_model: Path
) -> None:
    from vitsearch import app

    settings = load_settings(environ={}, home=home, model=str(tiny_model), threads=1)
    colour_folder(tmp_path / "photos", 4)
    app.index_folders(settings, [tmp_path / "photos"])
    colour_folder(tmp_path / "examples", 4, start=30)
    result = app.teach_labels(settings, tmp_path / "examples")
    assert result.labelled == 12 and result.embedded == 12
    assert app.taught_classifiers(settings)[0]["name"] == "examples"
    hits = app.search_label(settings, "blue", 20)
    assert hits and all(any(lab.custom for lab in h.labels) for h in hits)
