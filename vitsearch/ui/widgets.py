"""Pieces the pages share: the photo grid, paging, revealing a file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import streamlit as st

from vitsearch.records import Hit, Label, PhotoDetails, short_label
from vitsearch.ui import context
from vitsearch.ui.reveal import reveal

COLUMNS = 4
PAGE_SIZE = 24


def page_of(items: Sequence, key: str, page_size: int = PAGE_SIZE) -> Sequence:
    """The slice of ``items`` on the page chosen below the grid (results are never all shown)."""
    pages = max(1, -(-len(items) // page_size))
    if pages == 1:
        return items
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}-page")
    return items[(page - 1) * page_size : page * page_size]


def photo_grid(hits: Sequence[Hit], key: str, actions: bool = True) -> None:
    """Thumbnails with score, labels, date and path; "Similar" and "Reveal" under each."""
    details = context.app().details([h.id for h in hits])
    for start in range(0, len(hits), COLUMNS):
        for column, hit in zip(st.columns(COLUMNS), hits[start : start + COLUMNS], strict=False):
            with column:
                photo_card(hit, details.get(hit.id), key, actions)


def photo_card(hit: Hit, photo: PhotoDetails | None, key: str, actions: bool) -> None:
    thumbnail(photo)
    when = date_text(photo.taken_at) if photo else ""
    st.caption(f"**{hit.score:.3f}** · {label_text(hit.labels[:2])} · {when}")
    st.caption(f"`{hit.path}`" + ("" if hit.online else " (offline)"))
    if actions:
        similar_column, reveal_column = st.columns(2)
        # Short labels: a card is a quarter of the page, each button half a card.
        similar_column.button(
            "Similar",
            key=f"{key}-more-{hit.id}",
            help="Photos that look like this one",
            on_click=more_like,
            args=(hit.id,),
        )
        reveal_button = reveal_column.button(
            "Reveal", key=f"{key}-reveal-{hit.id}", help="Show the file in the file manager"
        )
        if reveal_button and photo is not None:
            reveal_file(photo.path)


def more_like(image_id: int) -> None:
    """Re-query by an indexed photo: clears the uploaded photo and the label box."""
    st.session_state["more_like"] = image_id
    st.session_state["label"] = ""
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    st.session_state["page"] = "Search"


def thumbnail(photo: PhotoDetails | None) -> None:
    data = context.app().thumbnail(photo) if photo is not None else None
    if data is None:
        st.caption("not readable now (offline, moved or deleted)")
    else:
        st.image(data, width="stretch")


def label_text(labels: Sequence[Label]) -> str:
    return ", ".join(f"{short_label(label.label)} {label.score:.0%}" for label in labels) or "-"


def date_text(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


def reveal_file(path: str) -> None:
    """Show a library photo in the file manager, saying (in a toast) what happened."""
    revealed = reveal(path)
    icon = ":material/folder_open:" if revealed.ok else ":material/error:"
    st.toast(revealed.message, icon=icon)


def too_few_photos(minimum: int) -> bool:
    """Whether the library has fewer photos than a page needs; if so, says how to index."""
    count = context.app().photo_count()
    if count >= minimum:
        return False
    state = "is empty" if count == 0 else f"has {count} photo; this page needs {minimum}"
    st.info(
        f"The library {state}. Index a folder from a terminal with "
        "`vitsearch index ~/Pictures` (or keep it in step with `vitsearch watch ~/Pictures`), "
        "or use **Library → Index a folder** here."
    )
    return True
