"""Your own labels without re-indexing: an open-set linear classifier on the stored embeddings.

``teach`` reads a folder with one sub-folder per label, embeds its example photos (reusing the
library's vectors for photos it already holds) and trains a class-balanced softmax regression in
numpy (seconds) with one more class, "none of these": random photos of the library itself, less
the examples' near copies and the photos so close to a label's examples that they are probably
unlabelled members of it. Those likely members that the first fit labels with 85% join the
examples for a second fit (a few examples rarely span a label). A distance gate backs it up: a
photo less similar to a label's example centroid than every example was to the others' (less a
margin) never gets that label. Scores are temperature-calibrated on out-of-fold predictions
(k-fold over examples and background photos), which also give the reported accuracy,
false-label rate and calibration error; a label is given only at 50% or more. The classifier is
stored in the library and labels every photo already indexed with no model forward; new photos
get their label at index time. A photo unlike every taught label gets none.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsearch.errors import VitsearchError
from vitsearch.labels.classifier import (
    NONE,
    SOURCE_PREFIX,
    LinearClassifier,
    decide,
    open_probabilities,
)
from vitsearch.model.feature_files import embed_files
from vitsearch.model.features import ImageEmbedder
from vitsearch.model.scores import softmax
from vitsearch.photos.files import content_hash_file
from vitsearch.photos.labelled import labelled_photos
from vitsearch.records import Label, TaughtClassifier
from vitsearch.store import Library

log = logging.getLogger(__name__)

SEED = 1234
FOLDS = 5  # k-fold over examples and background: 5-7 examples a label leave too few to hold out
STEPS = 400
LEARNING_RATE = 0.05
L2 = 1e-2  # bench_teach.py: 1e-4 overfits 6 examples in 192-d (recall -0.05 at equal false labels)
APPLY_CHUNK = 20_000
BACKGROUND_MAX = 1000  # library photos sampled: 3/4 "none of these", 1/4 held out
MIN_BACKGROUND = 20  # fewer usable library photos: the distance gate alone keeps the set open
NEAR_COPY = 0.95  # cosine above which a library photo is a copy of an example, not background
# Library photos closer to a label's centroid than this share of the examples are to theirs
# (leave-one-out) are left out of the background: they are likely members nobody sorted.
# bench_teach.py, 30 seeds: 0.1 keeps too many look-alikes out of "none" (4 labels: 14% false)
MEMBER_QUANTILE = 0.3
# Of those likely members, the ones the first fit labels with this calibrated probability join
# the examples for a second fit: 6 examples rarely span a label (bench_teach: +4-6 points of
# recall at the same false-label rate)
PSEUDO_LABEL_AT = 0.85
OTHERS_SHARE = 0.25  # of the sampled library photos: held out to measure the false-label rate
GATE_MARGIN = 0.05  # cosine below the least typical example before the gate says "none"
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Validation:
    """Out-of-fold quality: each example and background photo is scored by a classifier that
    did not train on it. Rates are None when there was nothing to measure them on."""

    folds: int
    examples: int  # held-out examples scored
    accuracy: float | None  # of those, the share given their own label ("none" is wrong)
    background: int  # background photos scored out of fold
    calibration_error: float | None  # expected calibration error of the top score, both sets
    others: int = 0  # library photos (not examples) never trained on
    # of those, the share given a taught label: false labels, or members nobody sorted
    false_label_rate: float | None = None


@dataclass(frozen=True)
class TeachResult:
    name: str
    classes: dict[str, int]  # label -> example count
    validation: Validation
    photos: int  # library photos checked
    label_counts: dict[str, int]  # label -> library photos that got it
    embedded: int  # examples that needed a model forward
    seconds: float

    @property
    def held_out_accuracy(self) -> float | None:
        return self.validation.accuracy

    @property
    def labelled(self) -> int:
        return sum(self.label_counts.values())

    def report(self) -> list[str]:
        """What ``vitsearch teach`` prints."""
        v = self.validation
        examples = ", ".join(f"{label} ({n})" for label, n in self.classes.items())
        lines = [f"taught {self.name}: {examples} examples"]
        if v.accuracy is None:
            lines.append("  held-out accuracy: n/a (give each label 2 or more examples)")
        else:
            lines.append(
                f"  held-out examples ({v.folds}-fold cross-validation, {v.examples}): "
                f"{v.accuracy:.1%} got their own label; calibration error "
                f"{v.calibration_error:.3f} (with {v.background} background photos)"
            )
        if v.false_label_rate is not None:
            lines.append(
                f"  other library photos ({v.others} held out, not examples): "
                f"{v.false_label_rate:.1%} got a taught label (false labels, or members "
                "you did not sort)"
            )
        counts = ", ".join(f"{label} {n:,}" for label, n in self.label_counts.items())
        lines.append(
            f"  labelled {self.labelled:,} of {self.photos:,} photos ({counts}); the rest are "
            f"none of these; {self.seconds:.1f}s, {self.embedded} examples needed the model"
        )
        return lines


def train(
    vectors: np.ndarray,
    targets: np.ndarray,
    classes: tuple[str, ...],
    background: np.ndarray | None = None,
    others: np.ndarray | None = None,
    seed: int = SEED,
    gate_margin: float | None = GATE_MARGIN,
    unsorted: np.ndarray | None = None,
) -> tuple[LinearClassifier, Validation]:
    """Fit on examples (+ background photos as "none of these"), calibrate the temperature on
    out-of-fold predictions and report their quality, and the share of ``others`` (library
    photos it never saw) given a label; ``gate_margin=None`` turns the gate off. ``unsorted``
    (library photos that look like members) lend a second fit the ones the first labels with
    PSEUDO_LABEL_AT; each fold picks its own, so held-out examples never choose them."""
    count = len(classes)
    x, y, with_background = _training_set(vectors, targets, count, background)
    folds = _folds(y, count, seed)
    fit = _Fit(classes, with_background, seed, gate_margin)
    if folds.max() < 0:  # no label has 2 examples: nothing to hold out
        classifier, validation = fit(x, y), Validation(0, 0, None, 0, None)
    else:
        logits, far = fit.out_of_fold(x, y, folds)
        temperature = _calibrate(logits, far, y, with_background)
        if unsorted is not None and len(unsorted):
            fit = dataclasses.replace(fit, pool=unsorted, pool_temperature=temperature)
            logits, far = fit.out_of_fold(x, y, folds)
            temperature = _calibrate(logits, far, y, with_background)
        probs = open_probabilities(logits, far, temperature, with_background)
        classifier = fit(x, y, temperature)
        validation = _validate(probs, y, count, folds)
    if others is None or len(others) == 0:
        return classifier, validation
    labelled = float((classifier.top(others)[0] != NONE).mean())
    return classifier, dataclasses.replace(
        validation, others=len(others), false_label_rate=labelled
    )


@dataclass(frozen=True)
class _Fit:
    """One way of fitting, applied to all rows and to each cross-validation fold alike."""

    classes: tuple[str, ...]
    with_background: bool
    seed: int
    gate_margin: float | None
    pool: np.ndarray | None = None  # likely members nobody sorted, for pseudo-labels
    pool_temperature: float = 1.0  # the first fit's calibration, to read the pool with

    def __call__(self, x: np.ndarray, y: np.ndarray, temperature: float = 1.0):
        model = self._fit(x, y, temperature)
        if self.pool is None:
            return model
        first = dataclasses.replace(model, temperature=self.pool_temperature)
        best, scores = first.top(self.pool)
        sure = (best != NONE) & (scores >= PSEUDO_LABEL_AT)
        if not sure.any():
            return model
        return self._fit(
            np.concatenate([x, self.pool[sure]]), np.concatenate([y, best[sure]]), temperature
        )

    def _fit(self, x: np.ndarray, y: np.ndarray, temperature: float) -> LinearClassifier:
        count = len(self.classes)
        weights, bias = fit_softmax(x, y, count + self.with_background, self.seed)
        centroids = min_cosine = None
        if self.gate_margin is not None:
            examples = y < count
            centroids, loo = centroids_and_loo(x[examples], y[examples], count)
            min_cosine = _gate(loo, y[examples], count, self.gate_margin)
        return LinearClassifier(self.classes, weights, bias, temperature, centroids, min_cosine)

    def out_of_fold(self, x: np.ndarray, y: np.ndarray, folds: np.ndarray):
        """Logits and gate verdicts for every row from the fold model that did not see it."""
        count = len(self.classes)
        logits = np.zeros((len(y), count + self.with_background), np.float32)
        far = np.zeros((len(y), count), bool)
        for fold in range(folds.max() + 1):
            held = folds == fold
            model = self(x[~held], y[~held])
            logits[held], far[held] = model.logits(x[held]), model.far(x[held])
        return logits, far


@dataclass(frozen=True)
class LibrarySplit:
    """A library sample, as ``teach`` uses it."""

    background: np.ndarray  # "none of these"
    unsorted: np.ndarray  # so close to a label that they are probably members nobody sorted
    others: np.ndarray  # held out as they are, to count false labels


def split_library(
    candidates: np.ndarray, examples: np.ndarray, targets: np.ndarray, count: int, seed: int = SEED
) -> LibrarySplit:
    """Library embeddings less copies of the examples: OTHERS_SHARE held out as they are,
    the rest split by ``likely_members`` into background and unsorted."""
    candidates = candidates[(candidates @ examples.T).max(axis=1) < NEAR_COPY]
    shuffled = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    held = round(len(shuffled) * OTHERS_SHARE)
    rest = shuffled[held:]
    likely = likely_members(rest, examples, targets, count)
    return LibrarySplit(rest[~likely], rest[likely], shuffled[:held])


def likely_members(
    candidates: np.ndarray,
    examples: np.ndarray,
    targets: np.ndarray,
    count: int,
    quantile: float = MEMBER_QUANTILE,
) -> np.ndarray:
    """Mask of the photos no farther from a label's centroid than all but ``quantile`` of
    its examples are from theirs (leave-one-out): unfit to stand for "none of these"."""
    if len(candidates) == 0:
        return np.zeros(0, bool)
    centroids, loo = centroids_and_loo(examples, targets, count)
    usable = loo[np.isfinite(loo)]
    bar = np.quantile(usable, quantile) if len(usable) else np.inf
    return (candidates @ centroids.T).max(axis=1) >= bar


def centroids_and_loo(x: np.ndarray, y: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit centroid per class, and each example's cosine to its class's other examples'
    centroid (nan for a class's only example)."""
    sums = np.zeros((count, x.shape[1]))
    np.add.at(sums, y, x)
    sizes = np.bincount(y, minlength=count)
    others = sums[y] - x
    loo = np.full(len(y), np.nan)
    has_others = sizes[y] > 1
    loo[has_others] = np.einsum("ij,ij->i", x, _unit(others))[has_others]
    return _unit(sums).astype(np.float32), loo


def fit_softmax(
    x: np.ndarray, y: np.ndarray, count: int, seed: int = SEED, steps: int = STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, L2-regularised softmax regression by full-batch Adam."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)  # float64 matmuls are 5-10x slower here, for nothing
    weights = rng.normal(0, 0.01, (x.shape[1], count)).astype(np.float32)
    bias = np.zeros(count, np.float32)
    per_class = np.bincount(y, minlength=count).astype(np.float32)
    sample_weight = (len(y) / (count * np.maximum(per_class, 1)))[y]
    onehot = np.eye(count, dtype=np.float32)[y]
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    for step in range(1, steps + 1):
        grad_logits = (softmax(x @ weights + bias) - onehot) * sample_weight[:, None] / len(y)
        grads = [x.T @ grad_logits + L2 * weights, grad_logits.sum(axis=0)]
        for i, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
            moments[i] = 0.9 * moments[i] + 0.1 * grad
            squares[i] = 0.999 * squares[i] + 0.001 * grad**2
            corrected = moments[i] / (1 - 0.9**step)
            param -= LEARNING_RATE * corrected / (np.sqrt(squares[i] / (1 - 0.999**step)) + 1e-8)
    return weights.astype(np.float32), bias.astype(np.float32)


def teach_folder(
    library: Library,
    embedder_factory: Callable[[], ImageEmbedder],
    folder: Path,
    name: str | None = None,
) -> TeachResult:
    """Train a classifier named ``name`` from ``folder``'s sub-folders and label the library."""
    started = time.perf_counter()
    folder = Path(folder).expanduser().absolute()
    examples = _examples(folder)
    name = name or folder.name
    vectors, targets, classes, embedded = _embed_examples(library, embedder_factory, examples)
    candidates = library_sample(library, vectors.shape[1])
    split = split_library(candidates, vectors, targets, len(classes))
    classifier, validation = train(
        vectors, targets, classes, split.background, split.others, unsorted=split.unsorted
    )
    classifier_id = library.save_classifier(
        name, classifier.to_bytes(), list(classes), validation.accuracy, _fingerprint(library)
    )
    photos, counts = apply_classifier(library, classifier_id, name, classifier)
    examples_per_label = {label: int((targets == i).sum()) for i, label in enumerate(classes)}
    return TeachResult(
        name,
        examples_per_label,
        validation,
        photos,
        {label: counts.get(label, 0) for label in classes},
        embedded,
        time.perf_counter() - started,
    )


def library_sample(library: Library, dim: int, seed: int = SEED) -> np.ndarray:
    """Up to BACKGROUND_MAX random library embeddings (all of a small library)."""
    ids = library.embedding_ids()
    if len(ids) > BACKGROUND_MAX:
        ids = np.random.default_rng(seed).choice(ids, BACKGROUND_MAX, replace=False)
    parts = [vectors for _ids, vectors in library.iter_embeddings(ids=ids.tolist())]
    return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)


def apply_classifier(
    library: Library, classifier_id: int, name: str, classifier: LinearClassifier
) -> tuple[int, Counter]:
    """Label every stored embedding its classifier recognises, with no model forward:
    (photos checked, photos per label)."""
    source = SOURCE_PREFIX + name
    library.clear_custom_labels(classifier_id)
    done, counts = 0, Counter[str]()
    for ids, vectors in library.iter_embeddings(chunk=APPLY_CHUNK):
        best, scores = classifier.top(vectors)
        known = best != NONE
        labels = [
            Label(classifier.classes[b], float(s), source)
            for b, s in zip(best[known], scores[known], strict=True)
        ]
        library.write_custom_labels(classifier_id, ids[known].tolist(), labels)
        counts.update(label.label for label in labels)
        done += len(ids)
    return done, counts


def classifier_summaries(library: Library) -> list[TaughtClassifier]:
    """What ``teach --list`` shows: each classifier's labels and accuracy."""
    return [
        TaughtClassifier(s["name"], tuple(s["classes"]), s["accuracy"], s["created_at"])
        for s in library.classifier_summaries()
    ]


def _training_set(
    vectors: np.ndarray, targets: np.ndarray, count: int, background: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Examples, plus the background as class ``count`` when there is enough of it."""
    vectors = np.asarray(vectors, np.float32)
    if background is None or len(background) < MIN_BACKGROUND:
        return vectors, np.asarray(targets), False
    x = np.concatenate([vectors, np.asarray(background, np.float32)])
    y = np.concatenate([targets, np.full(len(background), count)])
    return x, y, True


def _folds(y: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Stratified fold of each row; all -1 when no label has 2 examples to split."""
    per_class = np.bincount(y[y < count], minlength=count)
    folds_n = min(FOLDS, int(per_class.max()))
    folds = np.full(len(y), -1)
    if folds_n < 2:
        return folds
    rng = np.random.default_rng(seed)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        folds[rows] = (np.arange(len(rows)) + rng.integers(folds_n)) % folds_n
    return folds


def _gate(loo: np.ndarray, y: np.ndarray, count: int, margin: float) -> np.ndarray:
    """Per label: the least typical example's leave-one-out cosine, less ``margin``
    (-inf, no gate, for a label with a single example)."""
    bars = np.full(count, -np.inf, np.float32)
    for label in range(count):
        own = loo[(y == label) & np.isfinite(loo)]
        if len(own):
            bars[label] = own.min() - margin
    return bars


def _calibrate(logits: np.ndarray, far: np.ndarray, y: np.ndarray, with_background: bool) -> float:
    """Temperature scaling: the temperature with the least class-balanced negative
    log-likelihood of the out-of-fold predictions."""
    weight = 1.0 / np.bincount(y)[y]
    rows = np.arange(len(y))

    def loss(temperature: float) -> float:
        probs = open_probabilities(logits, far, temperature, with_background)
        return float(-(weight * np.log(probs[rows, y] + 1e-12)).sum())

    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 60))
    return float(candidates[int(np.argmin([loss(t) for t in candidates]))])


def _validate(probs: np.ndarray, y: np.ndarray, count: int, folds: np.ndarray) -> Validation:
    best, top = decide(probs)
    best = np.where(best == NONE, count, best)
    examples, background = y < count, y == count
    return Validation(
        folds=int(folds.max() + 1),
        examples=int(examples.sum()),
        accuracy=float((best[examples] == y[examples]).mean()),
        background=int(background.sum()),
        calibration_error=calibration_error(top, best == y),
    )


def calibration_error(scores: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS):
    """Expected calibration error: the mean |accuracy - confidence| over equal-width score
    bins, weighted by how many predictions fall in each."""
    edges = np.minimum((np.asarray(scores) * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(edges):
        members = edges == b
        error += members.sum() * abs(correct[members].mean() - scores[members].mean())
    return float(error / len(scores))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def _examples(folder: Path) -> dict[str, list[str]]:
    if not folder.is_dir():
        raise VitsearchError(f"no such folder: {folder}")
    examples = {label: paths for label, paths in labelled_photos(folder).items() if paths}
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
    known = library.indexed_with_hashes(list(hashes.values()))
    found = {}
    for path, digest in hashes.items():
        image_id = known.get(digest)
        stored = library.embedding(image_id) if image_id is not None else None
        if stored is not None:
            found[path] = stored[0]
    return found


def _fingerprint(library: Library) -> str:
    info = library.model
    return info.fingerprint if info else ""
