"""The library map: 2-D projections fitted on a sample, stored, extended, drawn."""

from __future__ import annotations

import json
import logging
import re
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import plant, sphere_groups
from vitsearch.errors import ConfigError, MissingFileError, VitsearchError
from vitsearch.explore.clusters import clusters
from vitsearch.explore.map_view import (
    BASE_COLOURS,
    UNCLUSTERED,
    UNCLUSTERED_COLOUR,
    cluster_colours,
    map_figure,
    map_figure_html,
    map_json,
)
from vitsearch.explore.projection import (
    AUTO_UMAP_MIN_POINTS,
    UMAP_BLOB,
    MapPoints,
    preview_pca,
    project,
    umap_pending,
    warm_umap,
)
from vitsearch.records import Label, ModelInfo
from vitsearch.store import open_library

DIM = 24
INFO = ModelInfo(name="m", fingerprint="sha256:map", dim=DIM)
LABELS = ("tabby, tabby cat", "golden retriever", "pizza, pizza pie")
# Three orthonormal directions: cosine 0 between groups, about 0.97 within one.
CENTRES = np.linalg.qr(np.random.default_rng(99).standard_normal((DIM, 3)))[0].T

_umap_installed = pytest.mark.skipif(
    find_spec("umap") is None, reason='umap-learn is not installed (pip install "vitsearch[map]")'
)


def requires_umap(test):
    """Slow tier too: UMAP's first fit in a process JIT-compiles numba kernels (30-80 s)."""
    return pytest.mark.slow(_umap_installed(test))


requires_plotly = pytest.mark.skipif(
    find_spec("plotly") is None, reason="plotly is not installed (pip install -e .)"
)


def grouped(per_group: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, their group) for ``per_group`` photos around each of the 3 centres."""
    groups = np.repeat(np.arange(3), per_group)
    noise = np.random.default_rng(seed).standard_normal((len(groups), DIM)) * 0.05
    vectors = CENTRES[groups] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), groups


def add_photos(home: Path, vectors: np.ndarray, groups: np.ndarray, tag: str) -> list[int]:
    """Write embedded photos through a writer, as the indexer does; returns their ids."""
    paths = [f"/photos/{tag}_g{g}_{i}.jpg" for i, g in enumerate(groups)]
    labels = [(Label(LABELS[g], 0.8), Label(LABELS[(g + 1) % 3], 0.1)) for g in groups]
    return plant(home, vectors, labels=labels, paths=paths, model=INFO)


def planted(home: Path, per_group: int = 12, seed: int = 0, tag: str = "a") -> dict[int, int]:
    """Photos in 3 well separated groups; returns id -> group."""
    vectors, groups = grouped(per_group, seed)
    ids = add_photos(home, vectors, groups, tag)
    return dict(zip(ids, groups.tolist(), strict=True))


def assert_groups_apart(points: MapPoints, group_of: dict[int, int]) -> None:
    """Every point's nearest group centroid in 2-D is its own group's."""
    groups = np.array([group_of[int(i)] for i in points.ids])
    centroids = np.stack([points.xy[groups == g].mean(axis=0) for g in range(3)])
    distances = np.linalg.norm(points.xy[:, None, :] - centroids[None], axis=2)
    assert (distances.argmin(axis=1) == groups).all()


def point_of(points: MapPoints) -> dict[int, tuple[float, float]]:
    return {int(i): tuple(p) for i, p in zip(points.ids, points.xy.tolist(), strict=True)}


def figure_traces(page: str) -> list[dict]:
    """The trace list of the figure embedded in a plotly HTML page."""
    start = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page).end()
    traces, _end = json.JSONDecoder().raw_decode(page, start)
    return traces


# -- PCA ----------------------------------------------------------------------------------


def test_pca_keeps_groups_apart(home: Path) -> None:
    group_of = planted(home)
    with open_library(home) as library:  # the map is derived data: a reader computes it
        points = project(library, method="pca")
        assert points.method == "pca"
        assert points.ids.dtype == np.int64 and points.ids.tolist() == sorted(group_of)
        assert points.xy.dtype == np.float32 and points.xy.shape == (len(group_of), 2)
        assert_groups_apart(points, group_of)
        state = library.map_state()
        assert (state["method"], state["count"], state["seed"]) == ("pca", 36, 1234)
        assert len(state["mean"]) == DIM and np.array(state["components"]).shape == (2, DIM)


def test_pca_fits_are_identical(home: Path) -> None:
    planted(home)
    with open_library(home) as library:
        first = project(library, method="pca", refit=True)
        second = project(library, method="pca", refit=True)
    assert np.array_equal(first.ids, second.ids) and np.array_equal(first.xy, second.xy)


def test_pca_fits_on_a_bounded_sample(home: Path) -> None:
    group_of = planted(home, per_group=20)
    with open_library(home) as library:
        points = project(library, method="pca", sample_size=15)
        assert library.map_state()["fitted_on"] == 15
    assert len(points) == 60
    assert_groups_apart(points, group_of)


def test_new_photos_are_transformed_and_old_ones_stay(home: Path) -> None:
    group_of = planted(home)
    with open_library(home) as library:
        before = point_of(project(library, method="pca"))
        fitted = library.map_state()
    vectors, groups = grouped(2, seed=5)
    new = add_photos(home, vectors, groups, tag="late")
    group_of.update(zip(new, groups.tolist(), strict=True))
    with open_library(home) as library:
        assert sorted(library.unmapped_ids().tolist()) == sorted(new)
        points = project(library)  # "auto" on 42 photos is PCA, as stored: no refit
        assert library.map_state() == fitted
        assert library.unmapped_ids().size == 0
    after = point_of(points)
    assert {i: after[i] for i in before} == before
    expected = (vectors - np.array(fitted["mean"])) @ np.array(fitted["components"]).T
    assert np.allclose([after[i] for i in new], expected, atol=1e-5)
    assert_groups_apart(points, group_of)


def test_deleted_photos_leave_the_map(home: Path) -> None:
    group_of = planted(home)
    gone = sorted(group_of)[:5]
    with open_library(home, write=True) as library:
        project(library, method="pca")
        library.delete(gone)
        stored_ids, _xy = library.map_points()  # the rows went with the images
        assert set(stored_ids.tolist()) == set(group_of) - set(gone)
        points = project(library, method="pca")
    assert points.ids.tolist() == sorted(set(group_of) - set(gone))


def test_auto_picks_pca_for_a_small_library(home: Path) -> None:
    planted(home, per_group=3)
    with open_library(home) as library:
        assert project(library).method == "pca"


def test_auto_without_umap_is_pca(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted(home, per_group=AUTO_UMAP_MIN_POINTS // 3 + 1)
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with open_library(home) as library:
        assert project(library).method == "pca"


# -- errors -------------------------------------------------------------------------------


def test_umap_without_umap_learn_is_a_config_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted(home)
    monkeypatch.setitem(sys.modules, "umap", None)
    with open_library(home) as library, pytest.raises(ConfigError) as raised:
        project(library, method="umap")
    assert 'pip install "vitsearch[map]"' in str(raised.value)


@pytest.mark.parametrize("count", [0, 1])
def test_too_few_photos(home: Path, count: int) -> None:
    vectors, groups = grouped(1, seed=0)
    add_photos(home, vectors[:count], groups[:count], tag="one")
    with open_library(home) as library, pytest.raises(VitsearchError, match="at least 2"):
        project(library, method="pca")


def test_unknown_method_is_a_config_error(home: Path) -> None:
    planted(home, per_group=2)
    with open_library(home) as library, pytest.raises(ConfigError, match="tsne"):
        project(library, method="tsne")


# -- UMAP ---------------------------------------------------------------------------------


@requires_umap
def test_umap_map_keeps_groups_apart_and_places_new_photos(home: Path) -> None:
    group_of = planted(home, per_group=10)
    with open_library(home) as library:
        points = project(library, method="umap")
        assert points.method == "umap" and len(points) == 30
        assert library.derived.load_blob(UMAP_BLOB) is not None
        assert_groups_apart(points, group_of)
        before = point_of(points)
        again = project(library, method="umap", refit=True)  # seeded: the same layout
        assert np.array_equal(again.xy, points.xy)
    vectors, groups = grouped(1, seed=5)
    new = add_photos(home, vectors, groups, tag="late")
    group_of.update(zip(new, groups.tolist(), strict=True))
    with open_library(home) as library:
        fitted_at = library.map_state()["computed_at"]
        points = project(library, method="umap")
        assert library.map_state()["computed_at"] == fitted_at  # transformed, not refitted
    after = point_of(points)
    assert {i: after[i] for i in before} == before and set(new) <= set(after)
    assert_groups_apart(points, group_of)


def numba_compilations() -> dict[str, int]:
    """How many compiled signatures each of umap-learn's and pynndescent's numba functions has."""
    from numba.core.registry import CPUDispatcher

    counts = {}
    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in ("umap", "pynndescent"):
            for attribute, value in list(vars(module).items()):
                if isinstance(value, CPUDispatcher):
                    counts[f"{name}.{attribute}"] = len(value.signatures)
    return counts


@requires_umap
def test_warmed_up_umap_leaves_nothing_to_compile_for_the_first_map(home: Path) -> None:
    group_of = planted(home, per_group=20)  # 60 photos: auto picks UMAP
    assert warm_umap(len(group_of), DIM)
    warmed = numba_compilations()
    assert sum(warmed.values()) > 20  # it did compile
    with open_library(home) as library:
        assert umap_pending(library)  # no map yet: a fit is due
        points = project(library)
        assert points.method == "umap" and not umap_pending(library)
    vectors, groups = grouped(1, seed=8)
    add_photos(home, vectors, groups, tag="late")
    with open_library(home) as library:
        assert umap_pending(library)  # new photos to place
        assert len(project(library)) == 63
    assert numba_compilations() == warmed  # neither the fit nor placing new photos compiled


def test_warming_umap_is_skipped_where_the_map_is_pca() -> None:
    assert not warm_umap(AUTO_UMAP_MIN_POINTS - 1, DIM)
    assert not warm_umap(1000, 0)  # no model recorded yet


def test_pca_preview_stores_nothing(home: Path) -> None:
    planted(home, per_group=4)
    with open_library(home) as library:
        points = project(library, method="pca")
        preview = preview_pca(library)
        assert preview.method == "pca" and preview.ids.tolist() == points.ids.tolist()
        assert np.allclose(preview.xy, points.xy, atol=1e-5)
        assert not umap_pending(library)  # a 12-photo library maps with PCA
    vectors, groups = grouped(1, seed=9)
    add_photos(home, vectors, groups, tag="late")
    with open_library(home) as library:
        assert len(preview_pca(library)) == 15
        assert len(library.map_points()[0]) == 12  # the stored map was left as it was


@requires_umap
def test_umap_fits_on_a_bounded_sample(home: Path) -> None:
    group_of = planted(home, per_group=10)
    with open_library(home) as library:
        points = project(library, method="umap", sample_size=20)
        assert library.map_state()["fitted_on"] == 20
    assert len(points) == 30
    assert_groups_apart(points, group_of)


@requires_umap
def test_auto_uses_umap_and_switching_method_refits(home: Path) -> None:
    group_of = planted(home, per_group=AUTO_UMAP_MIN_POINTS // 3 + 1)
    with open_library(home) as library:
        assert project(library).method == "umap"
        points = project(library, method="pca")
        assert points.method == "pca" and library.derived.load_blob(UMAP_BLOB) is None
    assert_groups_apart(points, group_of)


@requires_umap
def test_damaged_umap_model_is_refitted(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    planted(home, per_group=4)
    with open_library(home) as library:
        first = project(library, method="umap")
        library.derived.save_blob(UMAP_BLOB, b"not a pickle")
        caplog.set_level(logging.WARNING, logger="vitsearch.explore.projection")
        second = project(library, method="umap")
    assert "does not match the stored map; refitting" in caplog.text
    assert np.array_equal(first.xy, second.xy)


# -- figure and JSON ----------------------------------------------------------------------


@requires_plotly
def test_map_figure_has_one_trace_per_cluster(home: Path) -> None:
    planted(home, per_group=10)
    with open_library(home) as library:
        points = project(library, method="pca")
        assert library.clusters() == []  # drawing computes nothing: the app clusters first
        stored = [(c.id, c.name, c.size, c.cohesion) for c in clusters(library)]
        out = map_figure_html(library, points, home / "map.html")
    page = out.read_text(encoding="utf-8")
    assert "plotly.js v" in page and '<script src="https://cdn.plot.ly' not in page
    traces = figure_traces(page)
    assert len(stored) == 3 and len(traces) == 3
    assert {t["name"] for t in traces} == {f"{name} ({size})" for _cid, name, size, _c in stored}
    assert all(t["type"] == "scatter" for t in traces)
    hover = [text for t in traces for text in t["text"]]
    assert len(hover) == 30 and all(text.startswith("/photos/a_g") for text in hover)
    assert any("golden retriever (80%)" in text for text in hover)


@requires_plotly
def test_map_figure_shows_photos_added_since_clustering(home: Path) -> None:
    planted(home, per_group=10)
    with open_library(home) as library:
        clusters(library, k=3)
    vectors, groups = grouped(1, seed=5)
    add_photos(home, vectors, groups, tag="late")
    with open_library(home) as library:
        out = map_figure_html(library, project(library, method="pca"), home / "second.html")
    traces = figure_traces(out.read_text(encoding="utf-8"))
    assert len(traces) == 4 and traces[-1]["name"] == f"{UNCLUSTERED} (3)"


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


@pytest.mark.parametrize("count", [1, 10, 11, 35, 200])
def test_cluster_colours_never_repeat(count: int) -> None:
    colours = cluster_colours(count)
    assert len(colours) == len(set(colours)) == count
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert UNCLUSTERED_COLOUR not in colours
    if count <= len(BASE_COLOURS):
        assert colours == list(BASE_COLOURS[:count])  # a small library looks as it did


def test_cluster_colours_stay_apart_up_to_three_dozen() -> None:
    # Plotly's own ten are 43 apart (RGB distance) at their closest: no worse than that
    for count in range(11, 37):
        points = np.stack([rgb(c) for c in cluster_colours(count)])
        gaps = np.linalg.norm(points[:, None] - points[None], axis=2)
        np.fill_diagonal(gaps, np.inf)
        assert gaps.min() > 43, count


@requires_plotly
def test_map_of_many_clusters_gives_each_its_colour_and_its_name(home: Path) -> None:
    vectors, groups = sphere_groups([6] * 35, dim=64, seed=7)
    labels = [(Label(f"n{g:08d} kind {g}", 0.9),) for g in groups]  # with a wnid, not shown
    plant(home, vectors, labels=labels, model=ModelInfo("m", "sha256:many", 64))
    with open_library(home) as library:
        clusters(library, k=35)
        figure = map_figure(library, project(library, method="pca"))
    colours = [trace.marker.color for trace in figure.data]
    assert len(colours) == len(set(colours)) == 35  # Plotly alone would cycle 10
    assert figure.layout.annotations == ()  # 35 name boxes would pile up over the points
    assert figure.layout.yaxis.scaleanchor is None  # the map fills the box it is drawn in
    for trace in figure.data:
        name = trace.name.rsplit(" (", 1)[0]
        assert "n0000" not in name
        assert all(text.endswith(f"<i>{name}</i>") for text in trace.text)  # named on hover


def test_the_readme_install_draws_the_map() -> None:
    """`pip install -e .` brings plotly (`map --out`, the UI's page); the extra adds UMAP."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    core = {re.split(r"[<>=!~\[; ]", requirement)[0] for requirement in project["dependencies"]}
    assert "plotly" in core
    assert project["optional-dependencies"]["map"] == ["umap-learn>=0.5"]


def test_map_figure_without_plotly_is_a_config_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted(home, per_group=2)
    for name in ("plotly", "plotly.graph_objects"):
        monkeypatch.setitem(sys.modules, name, None)  # as if plotly were not installed
    with open_library(home) as library:
        points = project(library, method="pca")
        with pytest.raises(ConfigError, match="a vitsearch dependency: pip install plotly"):
            map_figure_html(library, points, home / "map.html")
    assert not (home / "map.html").exists()


@requires_plotly
def test_map_html_is_refused_where_it_cannot_be_written(home: Path) -> None:
    planted(home, per_group=2)
    missing = home / "no" / "such" / "map.html"
    with open_library(home) as library:
        points = project(library, method="pca")
        with pytest.raises(MissingFileError, match=re.escape(f"no such folder: {missing.parent}")):
            map_figure_html(library, points, missing)
        with pytest.raises(ConfigError, match="is a folder; give a file name"):
            map_figure_html(library, points, home)
    assert not (home / "no").exists()  # never created: a typo would make a tree of folders


def test_map_json(home: Path) -> None:
    group_of = planted(home, per_group=4)
    with open_library(home) as library:
        points = project(library, method="pca")
        assert {row["cluster"] for row in map_json(points, library)} == {None}  # not clustered
        clusters(library, k=3)
        rows = map_json(points, library)
        membership = library.cluster_of(list(group_of))
    assert [set(row) for row in rows] == [{"id", "path", "x", "y", "cluster"}] * 12
    assert [row["id"] for row in rows] == points.ids.tolist()
    assert all(row["cluster"] == membership[row["id"]] for row in rows)
    assert all(re.fullmatch(r"/photos/a_g\d_\d+\.jpg", row["path"]) for row in rows)
    assert np.allclose([(row["x"], row["y"]) for row in rows], points.xy, atol=1e-5)
