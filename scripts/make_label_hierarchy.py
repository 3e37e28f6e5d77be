"""Regenerate vitsearch/labels/imagenet_hierarchy.json from a WordNet is-a folder.

Run: ``python scripts/make_label_hierarchy.py WORDNET_DIR [--classes FOLDER_OR_FILE] [--out PATH]``.

WORDNET_DIR holds ``wordnet.is_a.txt`` (``parent child`` wnids, one edge a line) and
``words.txt`` (``wnid<TAB>names``), as distributed with the ImageNet metadata. ``--classes``
names the ImageNet-1k classes in index order 0..999: a folder whose file names start with the
wnid (e.g. an ImageNet sample, ``n01440764_tench.JPEG``: sorted wnids are the standard order),
or a text file with one wnid a line. Without it, the classes of the table at ``--out`` are kept,
so regenerating needs only the WordNet folder.

The table holds only what label search needs, names only (no glosses): the classes in order,
every class's and ancestor's names, and each such node's parents (so the ancestors of a class are
a walk up, and the file stays a few tens of KB). WordNet's licence travels inside it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitsearch"
DEFAULT_OUT = PACKAGE / "labels" / "imagenet_hierarchy.json"
WNID = re.compile(r"n\d{8}")

WORDNET_LICENCE = """\
WordNet Release 3.0 This software and database is being provided to you, the LICENSEE, by \
Princeton University under the following license. By obtaining, using and/or copying this \
software and database, you agree that you have read, understood, and will comply with these \
terms and conditions.: Permission to use, copy, modify and distribute this software and \
database and its documentation for any purpose and without fee or royalty is hereby granted, \
provided that you agree to comply with the following copyright notice and statements, \
including the disclaimer, and that the same appear on ALL copies of the software, database \
and documentation, including modifications that you make for internal use or for \
distribution. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS \
SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS \
OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON \
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY \
PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL \
NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of \
Princeton University or Princeton may not be used in advertising or publicity pertaining to \
distribution of the software and/or database. Title to copyright in this software, database \
and any associated documentation shall at all times remain with Princeton University and \
LICENSEE agrees to preserve same."""


def read_names(path: Path) -> dict[str, str]:
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.partition("\t")
        if WNID.fullmatch(wnid.strip()):
            names[wnid.strip()] = text.strip()
    return names


def read_parents(path: Path) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = defaultdict(set)
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2:
            parents[fields[1]].add(fields[0])
    return parents


def read_classes(source: Path) -> list[str]:
    """Class wnids in index order: sorted from a folder's file names, or a file's lines as is."""
    if source.is_dir():
        found = {m.group(0) for p in source.iterdir() if (m := WNID.match(p.name))}
        return sorted(found)
    return [line.split()[0] for line in source.read_text().splitlines() if line.strip()]


def build_table(names: dict[str, str], parents: dict[str, set[str]], classes: list[str]) -> dict:
    """The classes, and for them and every ancestor: names and parents (WordNet is a DAG)."""
    missing = [wnid for wnid in classes if wnid not in names]
    if missing:
        raise SystemExit(f"{len(missing)} classes have no name in words.txt, e.g. {missing[0]}")
    nodes, todo = set(), list(classes)
    while todo:
        wnid = todo.pop()
        if wnid not in nodes:
            nodes.add(wnid)
            todo.extend(parents.get(wnid, ()))
    ordered = sorted(nodes)
    return {
        "about": "ImageNet-1k classes (index order) and their WordNet ancestors, names only. "
        "Regenerate with scripts/make_label_hierarchy.py.",
        "licence": WORDNET_LICENCE,
        "classes": classes,
        "names": {wnid: names.get(wnid, wnid) for wnid in ordered},
        "parents": {w: sorted(parents[w]) for w in ordered if parents.get(w)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wordnet", type=Path, help="folder with wordnet.is_a.txt and words.txt")
    parser.add_argument("--classes", type=Path, help="ImageNet-1k wnids: a folder or a file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.classes is not None:
        classes = read_classes(args.classes)
    elif args.out.exists():
        classes = json.loads(args.out.read_text(encoding="utf-8"))["classes"]
    else:
        parser.error(f"{args.out} does not exist yet: name the classes with --classes")
    table = build_table(
        read_names(args.wordnet / "words.txt"),
        read_parents(args.wordnet / "wordnet.is_a.txt"),
        classes,
    )
    text = json.dumps(table, indent=0, ensure_ascii=False, sort_keys=False)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(
        f"wrote {args.out}: {len(classes)} classes, {len(table['names'])} names, "
        f"{len(text) // 1024} KB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
