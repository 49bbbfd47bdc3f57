"""The report's figures, drawn from a :class:`~mhd.client.report.SectionView` (PNG bytes).

Each figure shows the measure the verdicts used (:class:`~mhd.client.judge.Explanation`):
the blur a tile adds to the section's (px, the relative rule), the estimated
|defocus| (a calibration) or the feature density (the count's rule), with the
limit drawn on the axis or marked on the colour scale. Points and marks follow
the verdict the report lists (:attr:`Shown.verdict`), so a figure never says
"ok" of a tile the re-acquisition list holds.

Figures are made with :class:`matplotlib.figure.Figure`, not pyplot, so that
``client watch`` can draw them on a background thread.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from mhd.contracts.verdicts import Kind, Verdict, look

from .console import printable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from .report import SectionView, Shown

__all__ = ["MAX_MAPS", "cell_maps", "density", "measure", "section_map", "text_colour"]

#: Most tiles drawn in the cell maps.
MAX_MAPS = 48
#: Most tiles whose names label the x axis of the per-tile figures (more: integer ticks).
MAX_NAMED = 48


def _png(fig: "Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(**kwargs: object) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(**kwargs)  # type: ignore[arg-type]


def _label(view: "SectionView") -> str:
    m = view.measure
    if m == "added blur":
        return "added blur (px, in quadrature)"
    if m == "defocus":
        return f"estimated |defocus| ({view.units})"
    return "log features per megapixel"


def measure(view: "SectionView") -> bytes:
    """``focus.png``: each tile's value on the measure the verdicts used, in acquisition order, with its limit."""
    shown = view.tiles
    fig = _figure(figsize=(_width(len(shown)), 3.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(shown))
    values = [s.explanation.value for s in shown]
    top = _top(view)
    _scatter(ax, x, shown, lambda s: top if s.explanation.value is None and s.verdict == "oof" else s.explanation.value)
    limits = np.array([s.explanation.limit if math.isfinite(s.explanation.limit) else np.nan for s in shown])
    if np.isfinite(limits).any():
        ax.step(x, limits, where="mid", color="tab:red", ls="--", lw=1, label="limit (out of focus beyond)")
    if any(v is None and s.verdict == "oof" for v, s in zip(values, shown)):
        ax.axhline(top, color="0.85", lw=6, zorder=0, label="no detail above the noise")
    ax.set_ylabel(_label(view))
    ax.set_title(f"{view.name}: {view.measure} per tile, as the verdicts used it")
    _tile_axis(ax, shown)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8)
    return _png(fig)


def density(view: "SectionView") -> bytes:
    """``density.png``: the feature count per tile (features per megapixel, log scale), with the section median."""
    shown = view.tiles
    fig = _figure(figsize=(_width(len(shown)), 3.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(shown))
    counted = [s.rec.density for s in shown if s.verdict != "empty" and s.rec.density]
    bottom = min(counted) / 2 if counted else 1.0
    _scatter(ax, x, shown, lambda s: None if s.rec.density is None else max(s.rec.density, bottom))
    if math.isfinite(view.baseline.median) and view.baseline.n:
        ax.axhline(math.exp(view.baseline.median), color="0.4", ls=":", lw=1, label="section median")
    if view.measure == "log density" and math.isfinite(view.baseline.threshold):
        ax.axhline(math.exp(view.baseline.threshold), color="tab:red", ls="--", lw=1, label="limit (out of focus below)")
    if counted and min(counted) == max(counted):  # one value: a decade around it, not a singular axis
        ax.set_ylim(counted[0] / 3, counted[0] * 3)
    ax.set_yscale("log")
    ax.set_ylabel("features per megapixel")
    ax.set_title(f"{view.name}: feature count per tile (secondary: it falls with defocus and with dose)")
    _tile_axis(ax, shown)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8)
    return _png(fig)


def section_map(view: "SectionView") -> bytes:
    """``montage.png``: the tiles where they sit, coloured by the verdicts' measure (the limit at the colour
    scale's centre, marked), flagged tiles lettered (X defocus, A astigmatism with a line along its blur, P partial,
    o empty, ! error), names written where there is room. Only for sections whose tiles have positions."""
    from matplotlib.colors import TwoSlopeNorm

    pos = view.positions
    rows, cols = 1 + max(r for r, _ in pos.values()), 1 + max(c for _, c in pos.values())
    grid = np.full((rows, cols), np.nan)
    for s in view.tiles:
        if s.rec.tile in pos and s.explanation.value is not None and s.verdict not in ("empty", "error"):
            grid[pos[s.rec.tile]] = s.explanation.value
    limit = view.limit if math.isfinite(view.limit) else float(np.nanmedian(grid)) if np.isfinite(grid).any() else 1.0
    worse_above = view.measure != "log density"
    lo, hi = _range(grid, limit, worse_above)
    norm = TwoSlopeNorm(vcenter=limit, vmin=lo, vmax=hi)
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn_r" if worse_above else "RdYlGn"].with_extremes(bad="0.8")
    fig = _figure(figsize=(max(4.6, 1.6 + 0.9 * cols), 1.3 + 0.8 * rows), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap=cmap, norm=norm)
    named = cols <= 10
    for s in view.tiles:
        if s.rec.tile not in pos:
            continue
        r, c = pos[s.rec.tile]
        v = grid[r, c]
        ink = text_colour(cmap(norm(v)) if math.isfinite(v) else (0.8, 0.8, 0.8, 1))
        mark = look(s.verdict, s.kind).mark
        if mark:
            ax.text(c, r - (0.12 if named else 0), mark, ha="center", va="center", fontsize=11, fontweight="bold", color=ink)
        if named:
            name = textwrap.shorten(printable(s.rec.tile), 16, placeholder="…")
            ax.text(c, r + 0.3, name, ha="center", va="center", fontsize=5, color=ink)
        angle = s.rec.astigmatism_angle if s.kind == Kind.ASTIGMATISM else None
        if angle is not None:
            dx, dy = 0.4 * math.cos(math.radians(angle)), -0.4 * math.sin(math.radians(angle))  # rows point down
            ax.plot([c - dx, c + dx], [r - dy, r + dy], color=ink, lw=1.2)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title(f"{view.name}: {view.measure}\nX defocus, A astigmatism (line: blur direction), P partial, o empty, ! error", fontsize=7)
    bar = fig.colorbar(im, ax=ax, label=f"{_label(view)}\nlimit {limit:.2f}: the black line")
    bar.ax.axhline(limit, color="black", lw=1.5)
    return _png(fig)


def cell_maps(view: "SectionView") -> bytes | None:
    """``focus-maps.png``: each flagged tile's grid cells on the measure the partial rule used, or None when no
    flagged tile has cells.

    With cell blurs: the blur each cell adds to the rule's reference cell (px), the limit at the colour scale's
    centre, the cells a partly defocused tile has blurred outlined. Records without them (written before cell
    blurs, or judged by the count): each cell's feature density over the baseline's (``focus_map``).
    """
    by_blur = [s for s in view.flagged if s.explanation.cells is not None]
    shown = by_blur or [s for s in view.flagged if s.fresh.focus_map]
    if not shown:
        return None
    shown = shown[:MAX_MAPS]
    if by_blur:
        cells = [s.explanation.cells for s in shown]
        limit = shown[0].explanation.cell_limit or 1.0
        top = max([2.5 * limit] + [float(np.nanmax(c)) for c in cells if np.isfinite(c).any()])
        scale = _Scale("RdYlGn_r", limit, 0.0, top, f"blur a cell adds (px)\nlimit {limit:.1f}: the black line", "{:.1f}")
    else:
        cells = [np.maximum(np.asarray(s.fresh.focus_map, float), 0.01) for s in shown]
        scale = _Scale("RdYlGn", 1.0, math.exp(-1.5), math.exp(1.5), "cell density / the section's (log scale)", "{:.1f}", log=True)
    fig = _small_multiples(shown, cells, scale)
    more = f" (first {MAX_MAPS} of {len(view.flagged)})" if len(view.flagged) > MAX_MAPS else ""
    what = "blurred cells of a partly defocused tile outlined" if by_blur else "feature density of each cell"
    title = f"{view.name}: cells of the flagged tiles{more}; {what} (grey: not judged)"
    fig.suptitle(textwrap.fill(title, 30 + 30 * min(6, len(shown))), fontsize=8)
    return _png(fig)


@dataclass(frozen=True)
class _Scale:
    """A colour scale: map name, the value at its centre (the limit), its ends, the bar's label, the cells' format."""

    cmap: str
    centre: float
    lo: float
    hi: float
    label: str
    fmt: str
    log: bool = False

    def norm(self) -> "Normalize":
        from matplotlib.colors import LogNorm, TwoSlopeNorm

        return LogNorm(self.lo, self.hi, clip=True) if self.log else TwoSlopeNorm(vcenter=self.centre, vmin=self.lo, vmax=self.hi)


def _small_multiples(shown: "list[Shown]", cells: list[np.ndarray], scale: _Scale) -> "Figure":
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    norm, cmap = scale.norm(), colormaps[scale.cmap].with_extremes(bad="0.8")
    ncols = min(6, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = _figure(figsize=(1.4 + 1.9 * ncols, 0.8 + 2.3 * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for ax, s, values in zip(axes.flat, shown, cells):
        im = ax.imshow(values, cmap=cmap, norm=norm)
        for r, c in s.explanation.flagged_cells if s.kind == Kind.PARTIAL else ():
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
        if values.size <= 64:
            for (i, j), v in np.ndenumerate(values):
                if math.isfinite(v):
                    ax.text(j, i, scale.fmt.format(v), ha="center", va="center", fontsize=6, color=text_colour(cmap(norm(v))))
        ax.set_xticks([])
        ax.set_yticks([])
        name = textwrap.shorten(printable(s.rec.tile), 28, placeholder="…")
        ax.set_title(f"{name}\n" + textwrap.fill(printable(s.words), 30), fontsize=6)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    bar = fig.colorbar(im, ax=axes, shrink=0.8, label=scale.label)
    bar.ax.axhline(scale.centre, color="black", lw=1.5)
    return fig


def text_colour(rgba: tuple) -> str:
    """``"black"`` on light colours, ``"white"`` on dark ones (relative luminance, WCAG)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L ~ 0.179
    return "black" if luminance > 0.179 else "white"


def _width(n: int) -> float:
    return 2.6 + max(6.0, min(16.0, n * 0.16))


def _top(view: "SectionView") -> float:
    """Where a tile with no value (no detail left) is drawn: above every value and limit."""
    seen = [s.explanation.value for s in view.tiles if s.explanation.value is not None]
    seen += [s.explanation.limit for s in view.tiles if math.isfinite(s.explanation.limit)]
    return 1.15 * max(seen) if seen else 1.0


def _range(grid: np.ndarray, limit: float, worse_above: bool) -> tuple[float, float]:
    """Colour-scale ends around ``limit``: from 0 (or the lowest value) to at least twice as far."""
    finite = grid[np.isfinite(grid)]
    if worse_above:
        return min(0.0, limit - 1.0), max(2.0 * limit, float(finite.max()) if finite.size else 0.0, limit + 1e-6)
    lo = float(finite.min()) if finite.size else limit - 1.0
    hi = float(finite.max()) if finite.size else limit + 1.0
    return min(lo, limit - 1.0), max(hi, limit + 1.0)


def _tile_axis(ax: "Axes", shown: "list[Shown]") -> None:
    """Tile names on the x axis where there is room, else integer tile numbers; errors marked by a band."""
    from matplotlib.ticker import MaxNLocator

    if len(shown) <= MAX_NAMED:
        ax.set_xticks(range(len(shown)), [printable(s.rec.tile) for s in shown], rotation=70, fontsize=6)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    errors = [i for i, s in enumerate(shown) if s.verdict == "error"]
    for i in errors:
        ax.axvline(i, color=look("error").colour, alpha=0.3, lw=1, label="error: no value" if i == errors[0] else None)
    ax.set_xlabel("tile (acquisition order)")


def _scatter(ax: "Axes", x: np.ndarray, shown: "list[Shown]", value: "Callable[[Shown], float | None]") -> None:
    """One point per tile with a value, coloured by the verdict the report lists, out-of-focus kinds by marker."""
    groups = [(v.value, None) for v in Verdict if v is not Verdict.OOF] + [("oof", k.value) for k in Kind] + [("oof", None)]
    for verdict, kind in groups:
        idx = [i for i, s in enumerate(shown) if (s.verdict, s.kind if s.kind in Kind._value2member_map_ else None) == (verdict, kind)]
        idx = [i for i in idx if value(shown[i]) is not None]
        if idx or verdict == "ok":
            shape = look(verdict, kind)
            label = f"{f'oof: {kind}' if kind else verdict} ({len(idx)})"
            ax.scatter(x[idx], [value(shown[i]) for i in idx], s=24, marker=shape.marker, color=shape.colour, label=label, zorder=3)
