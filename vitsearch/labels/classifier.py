"""Taught labels as the indexer applies them: an open-set linear classifier over unit
embeddings (numpy only), stored in the library by ``teach``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitsearch.model.scores import softmax
from vitsearch.records import TAUGHT_SOURCE, Label
from vitsearch.store import Library

SOURCE_PREFIX = TAUGHT_SOURCE
NONE = -1  # top()'s class index for "none of these"
# An open-set label is given only when it is more likely right than not: below this calibrated
# probability the photo is "none of these" (bench_teach.py: 4 labels, 13.6% -> <10% false labels)
LABEL_AT_LEAST = 0.5


@dataclass(frozen=True)
class LinearClassifier:
    """Softmax regression over unit embeddings, with a calibration temperature.

    Open-set: trained with a background column (the last of ``weights``: "none of these")
    and/or a distance gate (``centroids``, ``min_cosine``).
    """

    classes: tuple[str, ...]
    weights: np.ndarray  # (dim, classes), or (dim, classes + 1) with the background last
    bias: np.ndarray
    temperature: float = 1.0
    centroids: np.ndarray | None = None  # (classes, dim) unit example centroids
    min_cosine: np.ndarray | None = None  # (classes,) below it: not that label

    @property
    def has_background(self) -> bool:
        return self.weights.shape[1] == len(self.classes) + 1

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, np.float32) @ self.weights + self.bias

    def far(self, vectors: np.ndarray) -> np.ndarray:
        """(vectors, classes) True where the gate rules a label out."""
        if self.centroids is None:
            return np.zeros((len(vectors), len(self.classes)), bool)
        return np.asarray(vectors, np.float32) @ self.centroids.T < self.min_cosine

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(vectors, classes + 1): calibrated probability of each label, then of none."""
        return open_probabilities(
            self.logits(vectors), self.far(vectors), self.temperature, self.has_background
        )

    def top(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index or NONE, its calibrated probability) per vector."""
        return decide(self.probabilities(vectors))

    def to_bytes(self) -> bytes:
        arrays = {"centroids": self.centroids, "min_cosine": self.min_cosine}
        # Any: numpy's savez type would take a dict of arrays for its allow_pickle flag too
        present: dict[str, Any] = {k: v for k, v in arrays.items() if v is not None}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            weights=self.weights,
            bias=self.bias,
            temperature=np.array(self.temperature),
            classes=np.array(self.classes),
            **present,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearClassifier:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            gate = ("centroids", "min_cosine")
            centroids, min_cosine = (saved[k] if k in saved.files else None for k in gate)
            return cls(
                tuple(str(c) for c in saved["classes"]),
                saved["weights"],
                saved["bias"],
                float(saved["temperature"]),
                centroids,
                min_cosine,
            )


def custom_labels_for(
    classifiers: list[tuple[int, str, LinearClassifier]], vectors: np.ndarray
) -> list[tuple[Label, ...]]:
    """Each vector's label from every classifier that recognises it (the indexer adds these
    to new photos); a photo unlike all of a classifier's labels gets none from it."""
    per_vector: list[list[Label]] = [[] for _ in range(len(vectors))]
    for _cid, name, classifier in classifiers:
        best, scores = classifier.top(vectors)
        for row, (b, s) in enumerate(zip(best, scores, strict=True)):
            if b != NONE:
                label = Label(classifier.classes[b], float(s), SOURCE_PREFIX + name)
                per_vector[row].append(label)
    return [tuple(labels) for labels in per_vector]


def load_classifiers(library: Library) -> list[tuple[int, str, LinearClassifier]]:
    return [
        (cid, name, LinearClassifier.from_bytes(blob)) for cid, name, blob in library.classifiers()
    ]


def decide(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label index or NONE, its probability) per row of ``open_probabilities``: the likeliest
    label when it has LABEL_AT_LEAST, else NONE with the chance that the likeliest label is
    wrong."""
    labels = probs[:, :-1]
    best = labels.argmax(axis=1)
    chance = labels[np.arange(len(best)), best]
    given = chance >= LABEL_AT_LEAST
    return np.where(given, best, NONE), np.where(given, chance, 1.0 - chance)


def open_probabilities(
    logits: np.ndarray, far: np.ndarray, temperature: float, with_background: bool
) -> np.ndarray:
    """Softmax over the labels (and the background); a gated label's mass goes to none."""
    probs = softmax(logits / temperature)
    if not with_background:
        probs = np.hstack([probs, np.zeros((len(probs), 1))])
    kept = np.where(far, 0.0, probs[:, :-1])
    return np.hstack([kept, np.clip(1 - kept.sum(axis=1, keepdims=True), 0, 1)])
