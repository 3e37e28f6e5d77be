"""Cluster names on real photos and weights: is a cluster's name true of its members?

Run: ``python benchmarks/bench_cluster_names.py PATH --model DIR [--images N] [--k auto,40]``.
PATH is a folder of ImageNet photos named ``<wnid>_<class>.JPEG`` (e.g. the 1000-photo ImageNet
sample), so each photo's true class is in its name. They are indexed in place (a seeded sample
of N through symlinks, as ``bench_labels.py`` does) into a temporary library with the torch fp32
backend, then clustered as ``vitsearch clusters --recompute --k K`` does, for each K.

A name claims what it names: each label in it (``A · B``: A or B) and its kind (``dog``). It
is true of a member when the member's true class is one of those labels' classes or lies under
that kind in WordNet. Printed: per cluster its size, the share of its members its name is true
of, and the name; then how many clusters are named and how many "mixed" (no label nor kind
says what most members are), the share of the named clusters' members their names are true of
(``precision``), and how many names are true of at least half of their cluster.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _photos import add_sample_options, index_sample

from vitsearch.explore.clusters import MIXED, compute_clusters, stored_clusters
from vitsearch.labels.hierarchy import Hierarchy, imagenet_hierarchy
from vitsearch.records import NO_FILTERS, short_label
from vitsearch.store import Library, open_library


@dataclass(frozen=True)
class Named:
    name: str
    size: int
    true: int | None  # members the name is true of; None for an unnamed cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_options(parser)
    parser.add_argument(
        "--k", default="auto,40,80", help="numbers of clusters (or auto), comma-separated"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = index_sample(args, Path(tmp))
        with open_library(settings.home) as library:
            for k in args.k.split(","):
                print(f"\nk={k}")
                report(judge(library, k if k == "auto" else int(k), imagenet_hierarchy()))


def judge(library: Library, k: int | str, hierarchy: Hierarchy) -> list[Named]:
    """Cluster the library afresh and judge each name against its members' true classes."""
    compute_clusters(library, k)
    ids = [int(i) for i in library.filtered_ids(NO_FILTERS)]
    cluster_of = library.cluster_of(ids)
    true_class = {hit.id: Path(hit.path).name[:9] for hit in library.hits(ids, [0.0] * len(ids))}
    vocabulary = [label for label, _, _ in library.label_vocabulary()]
    judged = []
    for cluster in stored_clusters(library):
        members = [true_class[i] for i in ids if cluster_of.get(i) == cluster.id]
        claims = claimed(cluster.name, vocabulary, hierarchy)
        true = None if claims is None else sum(is_true(w, claims, hierarchy) for w in members)
        judged.append(Named(cluster.name, len(members), true))
    return judged


def claimed(name: str, vocabulary: list[str], hierarchy: Hierarchy) -> set[str] | None:
    """The wnids a name claims (its labels' classes, its kind), None for an unnamed cluster."""
    if name == MIXED or name.startswith("cluster "):
        return None
    kind, _, labels = name.rpartition(": ")
    pieces = [p for p in labels.split(" · ") if p] + ([kind] if kind else [])
    by_label = {short_label(label): hierarchy.wnid_of(label) for label in vocabulary}
    kinds = {n for ancestors in hierarchy.ancestors.values() for n in ancestors}
    claims = {by_label[p] for p in pieces if by_label.get(p)}
    # a kind's first name can be another node's too: any node of that name counts
    claims |= {n for n in kinds if short_label(hierarchy.names[n]) in pieces}
    return claims


def is_true(wnid: str, claims: set[str], hierarchy: Hierarchy) -> bool:
    return wnid in claims or bool(claims & hierarchy.ancestors.get(wnid, frozenset()))


def report(judged: list[Named]) -> None:
    print(f"{'size':>5} {'true':>5}  name")
    for c in judged:
        share = f"{c.true / c.size:.2f}" if c.true is not None and c.size else "-"
        print(f"{c.size:>5} {share:>5}  {c.name}")
    named = [c for c in judged if c.true is not None]
    members = sum(c.size for c in named)
    precision = sum(c.true for c in named) / members if members else 0.0
    most = sum(c.true >= c.size / 2 for c in named)
    print(
        f"{len(judged)} clusters: {len(named)} named ({members} photos), "
        f"{len(judged) - len(named)} unnamed; precision {precision:.2f} "
        f"(share of named clusters' photos their name is true of); "
        f"{most} of {len(named)} names true of at least half their cluster"
    )


if __name__ == "__main__":
    main()
