"""Label search by the words people type ("dog", "bird", "car") on real photos and weights.

Run: ``python benchmarks/bench_labels.py PATH --model DIR [--images N] [--k 50]``. PATH is a folder
of ImageNet photos named ``<wnid>_<class>.JPEG`` (e.g. the 1000-photo ImageNet sample), so each
photo's true class is in its name. They are indexed in place (a seeded sample of N when given,
through symlinks) into a temporary library with the torch fp32 backend, then each query runs
through ``search_by_label``, as ``vitsearch search --label`` does.

A hit is right when its true class lies under the query's WordNet node(s) below (fixed here, not
taken from the search's own matching). Printed per query:

- ``relevant``: photos of that kind in the library, and ``P@k``, the precision of the top k;
- ``best P@k``: min(1, relevant / k), what a perfect ranking would reach;
- ``R-prec``: precision of the top ``relevant`` hits (P@k is capped when few are relevant);
- ``top-1 ceiling``: how often the model is right when its most likely label is of that kind,
  on how many (m) photos: what the model's own probabilities allow; ``P@m`` beside it is this
  ranking's precision at that same depth;
- ``before``: P@k with the matching this search had before it knew WordNet (whole words of the
  label text, ranked by the best label), "no label" when that found nothing;
- ``hits``: how many photos the search returns for k (fewer when fewer reach its floor,
  ``MIN_LABEL_SCORE``).

Then, over all the queries, how often a photo the query's labels reach is of the kind, by the
summed probability of those labels (the floor left off): what the floor is set from.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from _photos import add_sample_options, index_sample

from vitsearch.errors import NoSuchLabelError
from vitsearch.labels.hierarchy import Hierarchy, imagenet_hierarchy
from vitsearch.labels.search import labels_for_query, matching_labels, search_by_label
from vitsearch.records import NO_FILTERS, Hit
from vitsearch.store import Library, open_library

# What a person means by each word, as WordNet nodes: a photo is right when its class is below.
TRUTH = {
    "dog": {"n02084071"},  # dog, domestic dog
    "bird": {"n01503061"},
    "car": {"n02958343", "n02959942"},  # the automobile and the railway car
    "cat": {"n02121620"},  # cat, true cat (house cats, lynx, cougar; not lions)
    "fish": {"n02512053"},
    "vehicle": {"n04524313"},
    "food": {"n00021265", "n07555863"},  # food, nutrient; food, solid food
}


@dataclass(frozen=True)
class Row:
    query: str
    relevant: int
    precision: float
    r_precision: float
    at_top1: float  # P@(photos with a top-1 label of that kind), beside the ceiling
    ceiling: float | None
    top1: int
    before: float | None
    hits: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_options(parser)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = index_sample(args, Path(tmp))
        with open_library(settings.home) as library:
            report([evaluate(library, q, args.k, imagenet_hierarchy()) for q in TRUTH], args.k)
            by_score(library, imagenet_hierarchy())


def evaluate(library: Library, query: str, k: int, hierarchy: Hierarchy) -> Row:
    ids = [int(i) for i in library.filtered_ids(NO_FILTERS)]
    everything = library.hits(ids, [0.0] * len(ids))
    relevant = sum(is_kind(hit, query, hierarchy) for hit in everything)
    top1 = [h for h in everything if top_is_kind(h, query, hierarchy)]
    ceiling = sum(is_kind(h, query, hierarchy) for h in top1) / len(top1) if top1 else None
    hits = found(lambda: search_by_label(library, query, max(k, relevant)))
    return Row(
        query,
        relevant,
        precision(hits[:k], query, hierarchy, k),
        precision(hits[:relevant], query, hierarchy, relevant) if relevant else 0.0,
        precision(hits[: len(top1)], query, hierarchy, len(top1)) if top1 else 0.0,
        ceiling,
        len(top1),
        before(library, query, k, hierarchy),
        len(found(lambda: search_by_label(library, query, k))),
    )


def before(library: Library, query: str, k: int, hierarchy: Hierarchy) -> float | None:
    """The old search: labels containing the word, ranked by the best such label."""
    known = [label for label, _, _ in library.label_vocabulary()]
    wanted = matching_labels(query, known)
    if not wanted:
        return None
    return precision(library.best_with_labels(wanted, NO_FILTERS, k), query, hierarchy, k)


def found(search) -> list[Hit]:
    try:
        return search()
    except NoSuchLabelError:
        return []


def precision(hits: list[Hit], query: str, hierarchy: Hierarchy, k: int) -> float:
    return sum(is_kind(hit, query, hierarchy) for hit in hits) / k


def is_kind(hit: Hit, query: str, hierarchy: Hierarchy) -> bool:
    return bool(hierarchy.ancestors.get(Path(hit.path).name[:9], set()) & TRUTH[query])


def top_is_kind(hit: Hit, query: str, hierarchy: Hierarchy) -> bool:
    """Whether the photo's most likely label is of that kind."""
    return bool(hit.labels) and bool(hierarchy.ancestors_of(hit.labels[0].label) & TRUTH[query])


def report(rows: list[Row], k: int) -> None:
    print(
        f"{'query':<8} {'relevant':>8} {f'P@{k}':>6} {f'best P@{k}':>10} {'R-prec':>7} "
        f"{'top-1 ceiling (m)':>18} {'P@m':>5} {'before':>9} {'hits':>5}"
    )
    for r in rows:
        ceiling = f"{r.ceiling:.2f} ({r.top1:>3} photos)" if r.ceiling is not None else "-"
        old = f"{r.before:.2f}" if r.before is not None else "no label"
        print(
            f"{r.query:<8} {r.relevant:>8} {r.precision:>6.2f} {min(1, r.relevant / k):>10.2f} "
            f"{r.r_precision:>7.2f} {ceiling:>18} {r.at_top1:>5.2f} {old:>9} {r.hits:>5}"
        )


SCORE_BANDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 0.5, 1.01)


def by_score(library: Library, hierarchy: Hierarchy) -> None:
    """Of the photos each query's labels reach, the share of the kind by summed probability."""
    known = [label for label, _, _ in library.label_vocabulary()]
    everyone = len(library.filtered_ids(NO_FILTERS))
    scored = []
    for query in TRUTH:
        wanted = labels_for_query(query, known)
        hits = (
            library.best_with_labels(wanted, NO_FILTERS, everyone, combine="sum") if wanted else []
        )
        scored += [(hit.score, is_kind(hit, query, hierarchy)) for hit in hits]
    print("summed probability   photos  of the kind")
    for low, high in pairwise(SCORE_BANDS):
        band = [right for score, right in scored if low <= score < high]
        share = f"{sum(band) / len(band):.2f}" if band else "-"
        print(f"{f'[{low:.2f}, {min(high, 1):.2f})':<20} {len(band):>6} {share:>12}")


if __name__ == "__main__":
    main()
