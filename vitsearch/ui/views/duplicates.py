"""Duplicates: groups side by side, the keeper marked; deletion only to the trash, confirmed."""

from __future__ import annotations

import csv
import io

import streamlit as st

from vitsearch.records import counted
from vitsearch.ui import context
from vitsearch.ui.widgets import date_text, page_of, thumbnail, too_few_photos

GROUPS_PER_PAGE = 10
COLUMNS = 6


def render() -> None:
    st.header("Duplicates")
    shared = context.app()
    if too_few_photos(2):
        return
    kind = st.radio(
        "Kind",
        ["near", "exact", "burst"],
        horizontal=True,
        captions=[
            "resized, re-saved, toned, cropped, turned or mirrored copies",
            "byte-identical files",
            "shots seconds apart",
        ],
    )
    threshold = None
    if kind != "exact":
        default = shared.near_threshold if kind == "near" else shared.burst_threshold
        threshold = st.slider("Similarity threshold", 0.70, 1.0, default, 0.005)
    with st.spinner("Looking for duplicates…"):
        groups = shared.duplicates((kind,), threshold)
    if not groups:
        st.success("No duplicates of this kind.")
        return
    st.download_button(
        "Export the list (CSV)", to_csv(groups), "vitsearch-duplicates.csv", "text/csv"
    )
    st.caption(f"{len(groups)} groups; the suggested keeper (largest, then oldest) is marked.")
    for number, group in enumerate(page_of(groups, "duplicates", GROUPS_PER_PAGE)):
        show_group(group, number)
    trash_controls(groups)


def show_group(group, number: int) -> None:
    with st.container(border=True):
        bits = "" if group.hash_bits is None else f" · hash ≤ {group.hash_bits} bits apart"
        st.markdown(
            f"**{group.kind}** · {counted(len(group.members), 'photo')} · similarity ≥ "
            f"{group.similarity:.3f}{bits}"
        )
        for start in range(0, len(group.members), COLUMNS):
            row = group.members[start : start + COLUMNS]
            for column, photo in zip(st.columns(COLUMNS), row, strict=False):
                with column:
                    member_card(photo, keeper=photo.id == group.keeper.id)


def member_card(photo, keeper: bool) -> None:
    thumbnail(photo)
    st.caption(
        # A Streamlit badge, not an emoji: many Linux desktops have no emoji font.
        (":green-badge[keep] · " if keeper else "")
        + f"{photo.width}x{photo.height} · {photo.size / 1e6:.2f} MB · "
        + date_text(photo.taken_at)
    )
    st.caption(f"`{photo.path}`")
    if not keeper:
        st.checkbox("trash", key=f"trash-{photo.id}")


def trash_controls(groups) -> None:
    chosen = [
        photo.id
        for group in groups
        for photo in group.members
        if st.session_state.get(f"trash-{photo.id}")
    ]
    if not chosen:
        return
    ticked = counted(len(chosen), "photo")
    verb = "is" if len(chosen) == 1 else "are"
    st.warning(f"{ticked} {verb} ticked to go to the system trash.")
    if st.button(f"Move {ticked} to the trash", type="primary"):
        moved, problems = context.app().trash(chosen)
        for problem in problems:
            st.error(problem)
        st.success(f"Moved {counted(moved, 'photo')} to the trash and updated the library.")
        for image_id in chosen:
            st.session_state.pop(f"trash-{image_id}", None)


def to_csv(groups) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["group", "kind", "similarity", "keep", "path", "bytes", "width", "height", "taken"]
    )
    for number, group in enumerate(groups, 1):
        for photo in group.members:
            writer.writerow(
                [
                    number,
                    group.kind,
                    f"{group.similarity:.4f}",
                    photo.id == group.keeper.id,
                    photo.path,
                    photo.size,
                    photo.width,
                    photo.height,
                    date_text(photo.taken_at),
                ]
            )
    return out.getvalue()
