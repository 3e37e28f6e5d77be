"""Finding photos by the model's labels, forgivingly, and by the kinds of thing they are.

ImageNet labels are lists of synonyms ("tabby, tabby cat"): a query matches a label when it
equals one of its synonyms or a whole word or phrase inside one ("cat", "tabby"), ignoring case;
a leading WordNet id ("n02099712 Labrador retriever") is ignored, or matched when it is typed.

ImageNet labels are also WordNet leaves, and people type the words above them: "dog" names
"dog, domestic dog, Canis familiaris", the ancestor of 118 breeds (see ``hierarchy``). A query
that names such an ancestor finds every class below it that the library holds, and a photo
ranks by the summed probability of those classes (three breeds at 0.3, 0.2, 0.1 in its top 5:
0.6, the model's probability that it shows a dog). Which ancestors a query names:

- the closest match wins: an ancestor whose first name is the query ("cat, true cat": house cats,
  lynx, cougar) beats one that lists it later ("big cat, cat": lion, tiger), which "big cat"
  finds; so "cat" means what most people mean, and finds lions only in a library without cats;
- a compound ending in the query is a kind of it when it sits next to the kind the query names
  ("wild dog": dingo and dhole are dogs too; buses, filed under "public transport", are also
  "passenger vehicle"), not when it is elsewhere ("garden truck" is vegetables, not a truck);
- when the query names a kind, labels that merely contain the word are something else ("hot
  dog", "car mirror", "grocery store, food market") and are left out; labels that are exactly the
  query still count ("dog" taught as a label of its own);
- "car" is both the automobile and the railway car; both are kept, and summed probability puts
  the photos that most look like either first;
- the generic top of WordNet ("entity", "object", "whole", "organism") is not blocked: it names
  nearly every photo, ranked by how sure the model is of what it sees. That is what the words mean,
  and nobody types them by accident.

Labels of other checkpoints (no ImageNet class behind them) keep plain text matching.

A photo whose matching labels sum to less than MIN_LABEL_SCORE is no match: a label that
ranks fifth at 0.001 is the model saying "not this". Fewer than k photos come back rather than
k padded with them.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from vitsearch.errors import NoSuchLabelError
from vitsearch.labels.hierarchy import Hierarchy, imagenet_hierarchy
from vitsearch.records import NO_FILTERS, Filters, Hit, display_label, split_wnid
from vitsearch.store import Library

# How closely a name matches a query, closest first.
FIRST = 1  # the whole name, its first synonym, or its wnid
SYNONYM = 2  # one of its other synonyms
HEAD = 3  # the last word(s) of a synonym: "passenger vehicle" is a kind of vehicle
WORD = 4  # a whole word or phrase elsewhere inside a synonym

# The least summed probability a match needs. On real-vit-tiny over the ImageNet sample, of the
# photos a query's labels reach with less than 2%, 17% are of the kind (24 of 143, seven
# queries), half the rate from 2% to 30% (`benchmarks/bench_labels.py`, "by summed probability").
MIN_LABEL_SCORE = 0.02


@dataclass(frozen=True)
class LabelCount:
    label: str
    top: int  # photos whose most likely label it is
    anywhere: int  # photos that have it among their top labels

    def as_dict(self) -> dict:
        wnid, name = split_wnid(self.label)
        out = {"label": name, "top": self.top, "anywhere": self.anywhere}
        return out | ({"wnid": wnid} if wnid else {})


def synonyms(label: str) -> list[str]:
    return [part.strip().lower() for part in display_label(label).split(",") if part.strip()]


def match_tier(query: str, name: str) -> int | None:
    """How closely ``query`` matches ``name`` (a label or a WordNet entry): FIRST..WORD, or None."""
    wanted = _normalise(query)
    if not wanted:
        return None
    wnid, text = split_wnid(name)
    names = [_normalise(s) for s in synonyms(text)]
    if wanted in (_normalise(name), _normalise(text), wnid) or names[:1] == [wanted]:
        return FIRST
    if wanted in names:
        return SYNONYM
    if any(s.endswith(f" {wanted}") for s in names):
        return HEAD
    pattern = re.compile(rf"(?<!\w){re.escape(wanted)}(?!\w)")
    return WORD if any(pattern.search(s) for s in names) else None


def label_matches(query: str, label: str) -> bool:
    return match_tier(query, label) is not None


def matching_labels(query: str, labels: Iterable[str]) -> list[str]:
    return [label for label in labels if label_matches(query, label)]


def labels_for_query(
    query: str, labels: Sequence[str], hierarchy: Hierarchy | None = None
) -> list[str]:
    """The ``labels`` a search for ``query`` finds (see the module docstring), in their order."""
    hierarchy = hierarchy or imagenet_hierarchy()
    tier, kinds = _kinds(query, labels, hierarchy)
    found = {label for members in kinds.values() for label in members}
    # A query that names a kind leaves out labels merely containing the word ("hot dog").
    closest = SYNONYM if tier is not None and tier <= HEAD else WORD
    found.update(x for x in labels if (_label_tier(query, x, hierarchy) or WORD + 1) <= closest)
    return [label for label in labels if label in found]


def suggest(
    query: str, labels: Sequence[str], count: int = 5, hierarchy: Hierarchy | None = None
) -> list[str]:
    """The kinds, then the words and synonyms, of the library closest in spelling to ``query``;
    a kind says how many of the library's labels it covers: "dog (118 kinds)"."""
    hierarchy = hierarchy or imagenet_hierarchy()
    kinds = {s for w in _members(labels, hierarchy) for s in synonyms(hierarchy.names[w])}
    words: set[str] = set()
    for label in labels:
        for synonym in synonyms(label):
            words.add(synonym)
            words.update(synonym.split())
    wanted = _normalise(query)
    scored = sorted({(-_similarity(wanted, w), w not in kinds, w) for w in kinds | words})
    close = [w for minus, _, w in scored if -minus >= 0.6][:count]
    return [_with_kinds(w, labels, hierarchy) if w in kinds else w for w in close]


def label_counts(library: Library) -> list[LabelCount]:
    return [LabelCount(*row) for row in library.label_vocabulary()]


def search_by_label(
    library: Library, text: str, k: int = 10, filters: Filters = NO_FILTERS
) -> list[Hit]:
    """Photos whose stored labels match ``text`` or are kinds of what it names, ranked by the
    summed probability of those labels per photo; at most k, none under MIN_LABEL_SCORE."""
    known = [row.label for row in label_counts(library)]
    wanted = next(filter(None, (labels_for_query(q, known) for q in _spellings(text))), [])
    if not wanted:
        close = suggest(text, known)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        if not known:
            hint = "; the library has no labels yet (index some photos first)"
        raise NoSuchLabelError(f"no label {text!r} in the library{hint}")
    floor = max(filters.min_score or 0.0, MIN_LABEL_SCORE)
    return library.best_with_labels(wanted, replace(filters, min_score=floor), k, combine="sum")


def _kinds(
    query: str, labels: Sequence[str], hierarchy: Hierarchy
) -> tuple[int | None, dict[str, list[str]]]:
    """The closest tier at which ``query`` names ancestors of ``labels``, and those ancestors'
    member labels."""
    members = _members(labels, hierarchy)
    tiers = {w: t for w in members if (t := match_tier(query, f"{w} {hierarchy.names[w]}"))}
    if not tiers:
        return None, {}
    best = min(tiers.values())
    chosen = {w for w, t in tiers.items() if t == best}
    if best < HEAD:
        # A compound ending in the query, next to the kind it names, is a kind of it too: WordNet
        # files buses under "public transport", but calls them "passenger vehicle" ("vehicle"
        # finds them); "garden truck" (vegetables) is nowhere near "truck" and stays out.
        heads = {w for w, t in tiers.items() if t == HEAD}
        chosen |= {w for w in heads if any(hierarchy.related(w, c) for c in chosen)}
    return best, {w: members[w] for w in chosen}


def _label_tier(query: str, label: str, hierarchy: Hierarchy) -> int | None:
    """How closely ``query`` matches ``label`` or its class's WordNet names ("hot dog" matches
    real-vit-tiny's "n07697537 hotdog": WordNet also calls it "hotdog, hot dog, red hot")."""
    wnid = hierarchy.wnid_of(label)
    tiers = [match_tier(query, label), match_tier(query, hierarchy.names[wnid]) if wnid else None]
    return min((t for t in tiers if t is not None), default=None)


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _members(labels: Sequence[str], hierarchy: Hierarchy) -> dict[str, list[str]]:
    """Each ancestor of ``labels``' classes -> the labels below it."""
    members: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        for wnid in hierarchy.ancestors_of(label):
            members[wnid].append(label)
    return members


def _with_kinds(word: str, labels: Sequence[str], hierarchy: Hierarchy) -> str:
    tier, _ = _kinds(word, labels, hierarchy)
    if tier is None or tier > SYNONYM:
        return word
    found = len(labels_for_query(word, labels, hierarchy))
    return f"{word} ({found} kinds)" if found > 1 else word


def _spellings(text: str) -> list[str]:
    """The query, then its singular: people type "dogs" and "boxes"."""
    word = text.strip()
    forms = [text]
    if word.lower().endswith("es"):
        forms.append(word[:-2])
    if word.lower().endswith("s") and not word.lower().endswith("ss"):
        forms.insert(1, word[:-1])
    return forms


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())
