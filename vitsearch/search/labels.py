"""Finding photos by the model's labels, forgivingly.

ImageNet labels are lists of synonyms ("tabby, tabby cat"): a query matches a label when it
equals one of its synonyms or a whole word or phrase inside one ("cat", "tabby"), ignoring case.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from vitsearch.errors import NoSuchLabelError
from vitsearch.records import NO_FILTERS, Filters, Hit
from vitsearch.store import Library


@dataclass(frozen=True)
class LabelCount:
    label: str
    top: int  # photos whose most likely label it is
    anywhere: int  # photos that have it among their top labels

    def as_dict(self) -> dict:
        return {"label": self.label, "top": self.top, "anywhere": self.anywhere}


def synonyms(label: str) -> list[str]:
    return [part.strip().lower() for part in label.split(",") if part.strip()]


def label_matches(query: str, label: str) -> bool:
    wanted = _normalise(query)
    if not wanted:
        return False
    pattern = re.compile(rf"(?<!\w){re.escape(wanted)}(?!\w)")
    return _normalise(label) == wanted or any(pattern.search(s) for s in synonyms(label))


def matching_labels(query: str, labels: Iterable[str]) -> list[str]:
    return [label for label in labels if label_matches(query, label)]


def suggest(query: str, labels: Iterable[str], count: int = 5) -> list[str]:
    """The library's words and synonyms closest in spelling to ``query``."""
    vocabulary: set[str] = set()
    for label in labels:
        for synonym in synonyms(label):
            vocabulary.add(synonym)
            vocabulary.update(synonym.split())
    return difflib.get_close_matches(_normalise(query), sorted(vocabulary), n=count, cutoff=0.6)


def label_counts(library: Library) -> list[LabelCount]:
    return [LabelCount(*row) for row in library.db.label_vocabulary()]


def search_by_label(
    library: Library, text: str, k: int = 10, filters: Filters = NO_FILTERS
) -> list[Hit]:
    """Photos whose stored labels match ``text``, ranked by the label's probability."""
    known = [row.label for row in label_counts(library)]
    wanted = matching_labels(text, known)
    if not wanted:
        close = suggest(text, known)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        if not known:
            hint = "; the library has no labels yet (index some photos first)"
        raise NoSuchLabelError(f"no label {text!r} in the library{hint}")
    return library.db.best_with_labels(wanted, filters, k)


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())
