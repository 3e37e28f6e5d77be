"""Your own labels without re-indexing: a linear classifier on the stored CLS embeddings.

``teach`` reads a folder with one sub-folder per label, embeds its example photos (reusing the
library's vectors for photos it already holds), trains a class-balanced softmax regression in
numpy (seconds), reports its accuracy on a held-out split, calibrates a temperature on that split
so the scores are probabilities you can threshold, stores it in the library and labels every
photo already indexed, with no model forward. New photos get the label at index time.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsearch.errors import VitsearchError
from vitsearch.indexer.files import content_hash_file, image_extensions, scan
from vitsearch.records import Label
from vitsearch.store import Library

log = logging.getLogger(__name__)

SEED = 1234
HELD_OUT = 0.2
STEPS = 400
LEARNING_RATE = 0.05
L2 = 1e-4
SOURCE_PREFIX = "custom:"
APPLY_CHUNK = 20_000


@dataclass(frozen=True)
class LinearClassifier:
    """Softmax regression over unit embeddings, with a calibration temperature."""

    classes: tuple[str, ...]
    weights: np.ndarray  # (dim, classes)
    bias: np.ndarray  # (classes,)
    temperature: float = 1.0

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return _softmax(
            (np.asarray(vectors, np.float32) @ self.weights + self.bias) / self.temperature
        )

    def top(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index, calibrated probability) of the most likely class per vector."""
        probs = self.probabilities(vectors)
        best = probs.argmax(axis=1)
        return best, probs[np.arange(len(best)), best]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            weights=self.weights,
            bias=self.bias,
            temperature=np.array(self.temperature),
            classes=np.array(self.classes),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearClassifier:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            return cls(
                tuple(str(c) for c in saved["classes"]),
                saved["weights"],
                saved["bias"],
                float(saved["temperature"]),
            )


@dataclass(frozen=True)
class TeachResult:
    name: str
    classes: dict[str, int]  # label -> example count
    held_out_accuracy: float | None  # None when too few examples to hold any out
    labelled: int  # library photos labelled
    embedded: int  # examples that needed a model forward
    seconds: float


def train(
    vectors: np.ndarray, targets: np.ndarray, classes: tuple[str, ...], seed: int = SEED
) -> tuple[LinearClassifier, float | None]:
    """Fit on a stratified split, calibrate on the held-out part; returns its accuracy too."""
    train_rows, held_rows = _split(targets, seed)
    weights, bias = fit_softmax(vectors[train_rows], targets[train_rows], len(classes), seed)
    classifier = LinearClassifier(classes, weights, bias)
    if len(held_rows) == 0:
        return classifier, None
    held_x, held_y = vectors[held_rows], targets[held_rows]
    temperature = _calibrate(classifier, held_x, held_y)
    classifier = LinearClassifier(classes, weights, bias, temperature)
    accuracy = float((classifier.top(held_x)[0] == held_y).mean())
    return classifier, accuracy


def fit_softmax(
    x: np.ndarray, y: np.ndarray, count: int, seed: int = SEED, steps: int = STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, L2-regularised softmax regression by full-batch Adam."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    weights = rng.normal(0, 0.01, (x.shape[1], count))
    bias = np.zeros(count)
    per_class = np.bincount(y, minlength=count).astype(np.float64)
    sample_weight = (len(y) / (count * np.maximum(per_class, 1)))[y]
    onehot = np.eye(count)[y]
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    for step in range(1, steps + 1):
        grad_logits = (_softmax(x @ weights + bias) - onehot) * sample_weight[:, None] / len(y)
        grads = [x.T @ grad_logits + L2 * weights, grad_logits.sum(axis=0)]
        for i, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
            moments[i] = 0.9 * moments[i] + 0.1 * grad
            squares[i] = 0.999 * squares[i] + 0.001 * grad**2
            corrected = moments[i] / (1 - 0.9**step)
            param -= LEARNING_RATE * corrected / (np.sqrt(squares[i] / (1 - 0.999**step)) + 1e-8)
    return weights.astype(np.float32), bias.astype(np.float32)


def teach_folder(
    library: Library, embedder_factory: Callable[[], object], folder: Path, name: str | None = None
) -> TeachResult:
    """Train a classifier named ``name`` from ``folder``'s sub-folders and label the library."""
    started = time.perf_counter()
    folder = Path(folder).expanduser().absolute()
    examples = _examples(folder)
    name = name or folder.name
    vectors, targets, classes, embedded = _embed_examples(library, embedder_factory, examples)
    classifier, accuracy = train(vectors, targets, classes)
    classifier_id = library.db.save_classifier(
        name, classifier.to_bytes(), list(classes), accuracy, _fingerprint(library)
    )
    labelled = apply_classifier(library, classifier_id, name, classifier)
    counts = {label: int((targets == i).sum()) for i, label in enumerate(classes)}
    return TeachResult(name, counts, accuracy, labelled, embedded, time.perf_counter() - started)


def apply_classifier(
    library: Library, classifier_id: int, name: str, classifier: LinearClassifier
) -> int:
    """Label every stored embedding with its most likely class: no model forward."""
    source = SOURCE_PREFIX + name
    library.db.clear_custom_labels(classifier_id)
    done = 0
    for ids, vectors in library.db.iter_embeddings(chunk=APPLY_CHUNK):
        best, scores = classifier.top(vectors)
        labels = [
            Label(classifier.classes[b], float(s), source)
            for b, s in zip(best, scores, strict=True)
        ]
        library.db.write_custom_labels(classifier_id, ids.tolist(), labels)
        done += len(ids)
    return done


def custom_labels_for(
    classifiers: list[tuple[int, str, LinearClassifier]], vectors: np.ndarray
) -> list[tuple[Label, ...]]:
    """Each vector's label from every classifier (the indexer adds these to new photos)."""
    per_vector: list[list[Label]] = [[] for _ in range(len(vectors))]
    for _cid, name, classifier in classifiers:
        best, scores = classifier.top(vectors)
        for row, (b, s) in enumerate(zip(best, scores, strict=True)):
            per_vector[row].append(Label(classifier.classes[b], float(s), SOURCE_PREFIX + name))
    return [tuple(labels) for labels in per_vector]


def load_classifiers(library: Library) -> list[tuple[int, str, LinearClassifier]]:
    return [
        (cid, name, LinearClassifier.from_bytes(blob))
        for cid, name, blob in library.db.classifiers()
    ]


def _examples(folder: Path) -> dict[str, list[str]]:
    if not folder.is_dir():
        raise VitsearchError(f"no such folder: {folder}")
    extensions = image_extensions()
    examples = {
        sub.name: [stat.path for stat in scan(sub, extensions)]
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and not sub.name.startswith(".")
    }
    examples = {label: paths for label, paths in examples.items() if paths}
    if len(examples) < 2:
        raise VitsearchError(
            f"{folder} needs at least 2 sub-folders of example photos, one per label "
            f"(found {len(examples)})"
        )
    return examples


def _embed_examples(library, embedder_factory, examples):
    """Vectors for every example: the library's own when it holds the same bytes."""
    classes = tuple(sorted(examples))
    stored = _stored_vectors(library, [path for paths in examples.values() for path in paths])
    vectors, targets, pending = [], [], []
    for index, label in enumerate(classes):
        for path in examples[label]:
            found = stored.get(path)
            if found is not None:
                vectors.append(found)
                targets.append(index)
            else:
                pending.append((path, index))
    embedded = 0
    if pending:  # only examples the library does not hold go through the model
        # imported here: features -> indexer -> reconcile -> teach would be a cycle
        from vitsearch.features import embed_files

        target_of = dict(pending)
        kept, new_vectors = embed_files(embedder_factory(), [path for path, _ in pending])
        vectors.extend(new_vectors)
        targets.extend(target_of[path] for path in kept)
        embedded = len(kept)
    if not vectors:
        raise VitsearchError("none of the example photos could be read")
    return np.stack(vectors).astype(np.float32), np.array(targets), classes, embedded


def _stored_vectors(library: Library, paths: list[str]) -> dict[str, np.ndarray]:
    """The library's vectors for these files' bytes (same path, or a copy anywhere): no
    forward. Unreadable files are left out; the model path reports them."""
    hashes = {}
    for path in paths:
        try:
            hashes[path] = content_hash_file(path)
        except OSError:
            continue
    known = library.db.indexed_with_hashes(list(hashes.values()))
    found = {}
    for path, digest in hashes.items():
        image_id = known.get(digest)
        stored = library.db.embedding(image_id) if image_id is not None else None
        if stored is not None:
            found[path] = stored[0]
    return found


def _split(targets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: about HELD_OUT of each class with at least 3 examples is held out."""
    rng = np.random.default_rng(seed)
    train_rows, held_rows = [], []
    for label in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == label))
        hold = round(len(rows) * HELD_OUT) if len(rows) >= 3 else 0
        held_rows += rows[:hold].tolist()
        train_rows += rows[hold:].tolist()
    return np.array(sorted(train_rows)), np.array(sorted(held_rows), dtype=np.int64)


def _calibrate(classifier: LinearClassifier, x: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling: the temperature with the least negative log-likelihood."""
    logits = x @ classifier.weights + classifier.bias
    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 60))
    losses = [
        -np.log(_softmax(logits / t)[np.arange(len(y)), y] + 1e-12).mean() for t in candidates
    ]
    return float(candidates[int(np.argmin(losses))])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _fingerprint(library: Library) -> str:
    info = library.model
    return info.fingerprint if info else ""
