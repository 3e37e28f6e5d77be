"""The map as people see it: a Plotly figure (the UI), standalone HTML and JSON rows (the CLI).

Drawing never computes anything: clusters colour the map when they are stored (the app
clusters first when it wants them), and photos placed since the last clustering are grey.
"""

from __future__ import annotations

import colorsys
import html
from math import ceil, gcd
from pathlib import Path

import numpy as np

from vitsearch.errors import ConfigError, MissingFileError
from vitsearch.explore.projection import MapPoints
from vitsearch.records import display_label
from vitsearch.store import Library

WEBGL_ABOVE = 50_000  # SVG scatter plots crawl beyond this many points

UNCLUSTERED = "not clustered yet"

# Plotly's own ten: the map looks as before for a library of up to ten clusters.
BASE_COLOURS = (
    "#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a",
    "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52",
)  # fmt: skip

UNCLUSTERED_COLOUR = "#9e9e9e"

HUES_PER_SHADE = 12  # beyond ten clusters: this many hues at each lightness, then another shade

SHADES = (0.48, 0.32, 0.66)  # HLS lightness: mid, dark, light

SATURATION = 0.72


def map_figure_html(library: Library, points: MapPoints, out: Path) -> Path:
    """Write the map as a standalone interactive scatter plot (works offline).

    Returns:
        ``out``.

    Raises:
        ConfigError: plotly is not installed, or ``out`` is a folder.
        MissingFileError: ``out``'s folder does not exist (it is never created).
    """
    out = Path(out)
    check_map_out(out)
    map_figure(library, points).write_html(str(out), include_plotlyjs=True, full_html=True)
    return out


def check_map_out(out: Path) -> None:
    """Refuse a map file that could not be written, before any map work: a folder that does
    not exist is an error (a typo would otherwise make a tree of folders), not created."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. {out / 'map.html'}")
    if not out.parent.is_dir():
        raise MissingFileError(f"no such folder: {out.parent} (for --out {out}); create it first")


def map_figure(library: Library, points: MapPoints):
    """The map as a Plotly figure: one trace per stored cluster (named "NAME (SIZE)", largest
    first), plus one for photos not clustered (added since, or no clustering stored); hover
    shows path, top label and cluster name; ``customdata`` holds the photo ids, for selections.

    Raises:
        ConfigError: plotly is not installed.
    """
    go = _import_plotly()
    described = _describe(library, points.ids)
    keep = np.array([int(i) in described for i in points.ids], dtype=bool)
    ids, xy = points.ids[keep], points.xy[keep]
    scatter = go.Scattergl if len(ids) > WEBGL_ABOVE else go.Scatter
    figure = go.Figure()
    groups = _cluster_groups(library, ids)
    clustered = [(name, members) for name, members in groups if name != UNCLUSTERED]
    colours = [*cluster_colours(len(clustered)), UNCLUSTERED_COLOUR]  # unclustered come last
    for (name, members), colour in zip(groups, colours, strict=False):
        figure.add_trace(
            scatter(
                x=xy[members, 0],
                y=xy[members, 1],
                mode="markers",
                name=f"{name} ({int(members.sum())})",
                text=[f"{described[int(i)]}<br><i>{html.escape(name)}</i>" for i in ids[members]],
                customdata=ids[members],
                hoverinfo="text",
                marker={"size": 6 if len(ids) < 5000 else 3, "opacity": 0.8, "color": colour},
            )
        )
    hidden = {"showticklabels": False, "showgrid": False, "zeroline": False, "title": None}
    # No names written on the map (with dozens of clusters they pile up over the points):
    # a point's hover box names its cluster, and the legend lists them all. The axes are not
    # locked to one scale, so the map fills whatever box it is drawn in.
    figure.update_layout(
        title=f"vitsearch library map: {len(ids)} photos ({points.method})",
        template="plotly_white",
        hovermode="closest",
        legend={"itemsizing": "constant"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        xaxis=hidden,
        yaxis=hidden,
    )
    return figure


def cluster_colours(count: int) -> list[str]:
    """``count`` distinct colours, one per cluster (largest first), as ``#rrggbb``.

    Up to ten: Plotly's default ten. Beyond, Plotly would cycle its ten, so that clusters 1,
    11, 21 and 31 look alike: instead hues are spread round the circle, the first
    ``HUES_PER_SHADE`` (more past three dozen clusters) at mid lightness and a stride apart
    (the largest clusters differ most), then the same hues darker, then lighter; no two
    clusters share a colour.
    """
    if count <= len(BASE_COLOURS):
        return list(BASE_COLOURS[:count])
    hues = min(count, max(HUES_PER_SHADE, ceil(count / len(SHADES))))
    stride = _coprime_stride(hues)
    colours = []
    for i in range(count):
        hue = ((i * stride) % hues) / hues
        red, green, blue = colorsys.hls_to_rgb(hue, SHADES[i // hues], SATURATION)
        colours.append(f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}")
    return colours


def _coprime_stride(hues: int) -> int:
    """A step through ``hues`` slots that visits each once and lands far from the last."""
    stride = max(1, round(hues * 0.382))  # the golden section: neighbours in order sit apart
    while gcd(stride, hues) != 1:
        stride += 1
    return stride


def map_json(points: MapPoints, library: Library) -> list[dict]:
    """``{"id", "path", "x", "y", "cluster"}`` per photo; ``cluster`` is the stored cluster id.

    ``cluster`` is None for a photo added after the last clustering (or when the library has
    none stored); this never computes clusters. Photos deleted meanwhile are left out.
    """
    membership = library.cluster_of(points.ids.tolist())
    paths = _paths(library, points.ids)
    return [
        {
            "id": int(i),
            "path": paths[int(i)],
            "x": round(float(x), 6),
            "y": round(float(y), 6),
            "cluster": membership.get(int(i)),
        }
        for i, (x, y) in zip(points.ids, points.xy, strict=True)
        if int(i) in paths
    ]


def _import_plotly():
    try:
        import plotly.graph_objects as go
    except ImportError as error:
        raise ConfigError(
            f"the map figure needs plotly ({error}), a vitsearch dependency: "
            "pip install plotly, or install vitsearch again"
        ) from error
    return go


def _cluster_groups(library: Library, ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(cluster name, member mask) per cluster, largest first, then the unclustered photos."""
    names = {cid: name for cid, name, _size, _cohesion in library.clusters()}
    membership = library.cluster_of(ids.tolist())
    assigned = np.array([membership.get(int(i), -1) for i in ids], dtype=np.int64)
    assigned[~np.isin(assigned, list(names))] = -1
    groups = [(names.get(cid, UNCLUSTERED), assigned == cid) for cid in [*names, -1]]
    return [(name, members) for name, members in groups if members.any()]


def _describe(library: Library, ids: np.ndarray, chunk: int = 5000) -> dict[int, str]:
    """Hover text per photo still in the library: its path and top label."""
    described = {}
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk].tolist()
        for hit in library.hits(part, [0.0] * len(part)):
            text = html.escape(hit.path)
            if hit.labels:
                top = hit.labels[0]
                text += f"<br>{html.escape(display_label(top.label))} ({top.score:.0%})"
            described[hit.id] = text
    return described


def _paths(library: Library, ids: np.ndarray, chunk: int = 5000) -> dict[int, str]:
    paths: dict[int, str] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk].tolist()
        paths.update((hit.id, hit.path) for hit in library.hits(part, [0.0] * len(part)))
    return paths
