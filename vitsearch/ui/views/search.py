"""Search: drop a photo (or name a label) and see the nearest photos."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path

import streamlit as st

from vitsearch.errors import VitsearchError
from vitsearch.records import Filters
from vitsearch.ui import context
from vitsearch.ui.widgets import label_text, page_of, photo_grid, thumbnail, too_few_photos

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "avif"]
MAX_UPLOAD_MB = 50
ALL_FOLDERS = "(all folders)"


def render() -> None:
    st.header("Search")
    if too_few_photos(1):
        return
    filters, k = filter_controls()
    upload = st.file_uploader(
        "Drop a photo to find the ones that look like it",
        type=IMAGE_TYPES,
        max_upload_size=MAX_UPLOAD_MB,
        key=f"upload-{st.session_state.get('upload_round', 0)}",
    )
    label = st.text_input(
        "…or search by label", placeholder="cat, golden retriever, pizza", key="label"
    )
    try:
        results = run_query(upload, label, filters, k)
    except VitsearchError as exc:
        st.error(str(exc))
        return
    if results is not None:
        show_results(results)


def run_query(upload, label: str, filters: Filters, k: int):
    shared = context.app()
    if upload is not None:
        st.session_state.pop("more_like", None)
        context.embedder_loaded()
        labels, hits = shared.search_upload(upload.getvalue(), k, filters)
        query_column, labels_column = st.columns([1, 3])
        query_column.image(upload.getvalue(), caption="your photo", width="stretch")
        labels_column.markdown(f"**The model sees:** {label_text(labels) or '(no labels)'}")
        return hits
    if label.strip():
        return shared.search_label(label, k, filters)
    if "more_like" in st.session_state:
        image_id = st.session_state["more_like"]
        more_like_header(image_id)
        return shared.similar_to_photo(image_id, k, filters)
    return None


def more_like_header(image_id: int) -> None:
    """The photo the results are like: its thumbnail, name and folder."""
    photo = context.app().details([image_id]).get(image_id)
    if photo is None:
        return  # deleted meanwhile: the search says so
    picture, words = st.columns([1, 5], vertical_alignment="center")
    with picture:
        thumbnail(photo)
    path = Path(photo.path)
    words.markdown(f"**More like {path.name}**")
    words.caption(f"in `{path.parent}` · drop a photo or type a label to search for another")


def show_results(hits) -> None:
    if not hits:
        st.warning("No results.")
        return
    st.subheader(f"{len(hits)} results")
    photo_grid(page_of(hits, "search"), key="search")


def filter_controls() -> tuple[Filters, int]:
    sidebar = st.sidebar
    sidebar.subheader("Filters")
    folders = context.app().folders()
    folder = sidebar.selectbox("Folder", [ALL_FOLDERS, *folders])
    below = sidebar.text_input("…or below this folder", placeholder="/path/to/a/sub/folder")
    under = below.strip() or (None if folder == ALL_FOLDERS else folder)
    # () is an empty range, which Streamlit takes though its types do not say so
    dates = sidebar.date_input("Taken between", value=(), format="YYYY-MM-DD")  # type: ignore[arg-type]
    min_score = sidebar.slider("Minimum score", 0.0, 1.0, 0.0, 0.01)
    k = int(sidebar.number_input("Results", 1, 1000, 48, step=12))
    after, before = _date_range(dates)
    filters = Filters(
        under=under,
        after=after,
        before=before,
        min_score=min_score or None,
    )
    return filters, k


def _date_range(dates) -> tuple[float | None, float | None]:
    if not isinstance(dates, (tuple, list)) or not dates:
        return None, None
    start: date = dates[0]
    end: date = dates[1] if len(dates) > 1 else dates[0]
    after = datetime.combine(start, time.min).timestamp()
    before = datetime.combine(end, time.max).timestamp()
    return after, before
