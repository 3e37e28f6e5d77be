"""Open-set `teach` on trained weights: recall on a label's unseen members, false labels elsewhere.

Run: ``python benchmarks/bench_teach.py PATH --model DIR [--labels cars,cats,dogs] [--examples 6]
[--seeds 5]``. PATH is the ImageNet sample (one ``<wnid>_<class>.JPEG`` per class); the WordNet
files (``--wordnet``, default PATH/../wordnet) turn classes into concepts a user would teach:
"dogs" is every dog breed (wnids below n02084071), "cats" every feline, "cars" every car plus
police van and pickup, "birds" every bird.

This is the user's scenario: a library (a random share of the photos, ``--library-share``, half
by default) and a folder of a few examples per label taken from it. For each seed, ``teach``'s
own functions split that library (``split_library``: background, likely members, held-out
photos) and train (``train``, with its k-fold validation); then the classifier labels the other
photos, which it never saw:

- recall: members of a concept (not examples) given their own label;
- false labels: photos outside every concept given any taught label;
- ECE: expected calibration error of the top score (label or "none") over both.

Each way of keeping the set open is measured: none (the old closed-set softmax), the distance
gate alone, the background class alone, both, and both with pseudo-labelled likely members
(what ``teach`` ships); open-set methods give a label at 50% or more. Photos are embedded
once with the torch fp32 backend and cached in the temp dir, so reruns take seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsearch import app
from vitsearch.config import load_settings
from vitsearch.labels.classifier import NONE
from vitsearch.labels.teach import calibration_error, split_library, train
from vitsearch.machine.hardware import cpu_name
from vitsearch.model.feature_files import embed_files

CONCEPTS = {
    "cars": ("n02958343", "n03977966", "n03930630"),  # car; police van, pickup
    "cats": ("n02120997",),  # feline: 5 domestic cats and 8 big cats
    "dogs": ("n02084071",),
    "birds": ("n01503061",),
}
METHODS = {  # name -> (use the background class, the gate, pseudo-labels)
    "closed-set (before)": (False, None, False),
    "gate only": (False, "default", False),
    "background only": (True, None, False),
    "background + gate": (True, "default", False),
    "+ pseudo-labels": (True, "default", True),
}


@dataclass(frozen=True)
class Outcome:
    recall: float  # unseen members given their own label
    per_label: dict[str, float]
    false_labels: float  # unseen unrelated photos given any label
    ece: float
    cv_accuracy: float | None  # teach's own estimates: k-fold on the examples ...
    cv_false_labels: float | None  # ... and held-out library photos (may hold members)
    background: int


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="ImageNet sample folder (<wnid>_<class>.JPEG)")
    parser.add_argument("--model", required=True, help="checkpoint folder (trained weights)")
    parser.add_argument("--wordnet", type=Path, help="folder of wordnet.is_a.txt")
    parser.add_argument("--labels", default="cars,cats,dogs", help=f"of {', '.join(CONCEPTS)}")
    parser.add_argument("--examples", type=int, default=6, help="examples per label")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--library-share", type=float, default=0.5, help="of the photos in the library"
    )
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def embeddings(photos: list[Path], model: str, threads: int) -> np.ndarray:
    """Every photo's embedding (torch fp32), cached by model and photo list."""
    key = hashlib.sha256((model + "\n".join(map(str, photos))).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"vitsearch-bench-teach-{key}.npy"
    if cache.exists():
        return np.load(cache)
    settings = load_settings(backend="torch", precision="fp32", model=model, threads=threads)
    kept, vectors = embed_files(app.load_model(settings), [str(p) for p in photos], 32)
    if len(kept) != len(photos):
        raise SystemExit(f"{len(photos) - len(kept)} photos did not decode")
    np.save(cache, vectors)
    return vectors


def concept_members(photos: list[Path], wordnet: Path, labels: list[str]) -> np.ndarray:
    """Index of the concept each photo belongs to, -1 for none."""
    children = defaultdict(list)
    for line in (wordnet / "wordnet.is_a.txt").read_text().splitlines():
        parent, child = line.split()
        children[parent].append(child)
    member = np.full(len(photos), -1)
    wnids = [p.name.split("_")[0] for p in photos]
    for index, label in enumerate(labels):
        below = set(CONCEPTS[label])
        stack = list(below)
        while stack:
            for child in children[stack.pop()]:
                if child not in below:
                    below.add(child)
                    stack.append(child)
        member[[w in below for w in wnids]] = index
    return member


def run(vectors, member, labels, examples_per_label, seed, method, share=0.5) -> Outcome:
    rng = np.random.default_rng(seed)
    examples = np.concatenate(
        [
            rng.choice(np.flatnonzero(member == k), examples_per_label, replace=False)
            for k in range(len(labels))
        ]
    )
    in_library = rng.permutation(len(vectors)) < len(vectors) * share  # and the examples:
    in_library[examples] = True  # they are the user's photos too
    targets = member[examples]
    with_background, margin, pseudo = METHODS[method]
    split = split_library(vectors[in_library], vectors[examples], targets, len(labels), seed)
    options = {} if margin == "default" else {"gate_margin": None}
    classifier, validation = train(
        vectors[examples],
        targets,
        tuple(labels),
        split.background if with_background else None,
        split.others,
        seed,
        unsorted=split.unsorted if pseudo else None,
        **options,
    )
    unseen = ~in_library
    best, scores = decisions(classifier, vectors[unseen], method)
    truth = member[unseen]
    members = truth >= 0
    correct = np.where(members, best == truth, best == NONE)
    return Outcome(
        recall=float((best[members] == truth[members]).mean()),
        per_label={label: float((best[truth == k] == k).mean()) for k, label in enumerate(labels)},
        false_labels=float((best[~members] != NONE).mean()),
        ece=calibration_error(scores, correct),
        cv_accuracy=validation.accuracy,
        cv_false_labels=validation.false_label_rate,
        background=len(split.background) if with_background else 0,
    )


def decisions(classifier, vectors: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(label or NONE, its score) per vector; the closed-set baseline takes the argmax, as
    classifiers did before open-set labels (no 50% bar, every photo labelled)."""
    if method != "closed-set (before)":
        return classifier.top(vectors)
    labels = classifier.probabilities(vectors)[:, :-1]
    best = labels.argmax(axis=1)
    return best, labels[np.arange(len(best)), best]


def report(outcomes: dict[str, list[Outcome]], labels: list[str]) -> None:
    def mean(values) -> str:
        values = [v for v in values if v is not None]
        return f"{np.mean(values):6.1%}" if values else "     -"

    print(
        f"{'method':22s} {'recall':>7s} {'false':>7s} {'ECE':>6s}   "
        + " ".join(f"{label:>6s}" for label in labels)
        + f"   {'cv acc':>7s} {'cv false':>8s} {'bg':>5s}"
    )
    for method, runs in outcomes.items():
        print(
            f"{method:22s} {mean(o.recall for o in runs)} "
            f"{mean(o.false_labels for o in runs)} {np.mean([o.ece for o in runs]):6.3f}   "
            + " ".join(mean(o.per_label[label] for o in runs) for label in labels)
            + f"   {mean(o.cv_accuracy for o in runs)} {mean(o.cv_false_labels for o in runs):>8s}"
            f" {np.mean([o.background for o in runs]):5.0f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    labels = args.labels.split(",")
    photos = sorted(args.path.glob("*.JPEG"))
    member = concept_members(photos, args.wordnet or args.path.parent / "wordnet", labels)
    vectors = embeddings(photos, args.model, args.threads)
    sizes = ", ".join(f"{label} {(member == k).sum()}" for k, label in enumerate(labels))
    print(f"CPU: {cpu_name()}\nmodel: {args.model} (torch fp32), {len(photos)} photos")
    print(
        f"labels: {sizes} photos; {args.examples} examples each, the library: them and "
        f"{args.library_share:.0%} of the rest; measured on the others; {args.seeds} seeds; "
        f"{(member < 0).sum()} photos outside every label\n"
    )
    outcomes = {
        method: [
            run(vectors, member, labels, args.examples, s, method, args.library_share)
            for s in range(args.seeds)
        ]
        for method in METHODS
    }
    report(outcomes, labels)
    print(
        "\nrecall: unseen members given their own label; false: unseen photos outside every "
        "label given one; cv acc: teach's k-fold recall estimate; cv false: the share of "
        "held-out library photos teach saw labelled (an upper bound: some are members); bg: "
        "background photos"
    )


if __name__ == "__main__":
    main()
