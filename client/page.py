"""The section's page: one self-contained HTML file (no network, no CDN), static or live.

:func:`section_state` turns a :class:`~mhd.client.report.SectionView` into one
JSON document: the rule in force, the run's settings, the counts, the progress
of a running ``watch``, the flagged tiles in re-acquisition order with their
thumbnails, the figures and every tile's row. :func:`render_page` embeds it in
the page, whose script draws everything from it with DOM calls (a tile's name
is text, never markup). ``client report`` and ``client watch`` write that page
to ``mhd-report/index.html``; ``client watch --serve`` serves it live
(:mod:`mhd.client.live`): the page then asks for ``state.json?v=N`` every
second and redraws when the server has a newer version.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from mhd import __version__
from mhd.contracts.record import finite
from mhd.contracts.verdicts import Verdict, look

from .rule import rule_summary
from .thumbs import MAX_THUMBS

if TYPE_CHECKING:
    from .report import SectionView
    from .thumbs import Pair

__all__ = ["render_page", "section_state"]

#: Figures in the order the page shows them, with their captions.
FIGURES = {
    "focus.png": "Each tile on the measure the verdicts used, with its limit",
    "montage.png": "The section: the same measure where each tile sits",
    "focus-maps.png": "Cells of the flagged tiles: blurred cells outlined",
    "density.png": "Feature count per tile (secondary)",
}


def section_state(
    view: "SectionView",
    settings: dict[str, str],
    progress: dict[str, Any] | None,
    figures: dict[str, bytes],
    thumbs: "dict[str, Pair]",
    drawn_at: int | None = None,
    link: Callable[[bytes], str] | None = None,
) -> dict[str, Any]:
    """The page's data (JSON-able).

    Parameters
    ----------
    view : SectionView
    settings : dict of str to str
        The run's settings, shown as given.
    progress : dict, optional
        A running ``watch``'s ``pending`` (tiles seen, no verdict yet), ``rate`` (verdicts per minute) and
        ``elapsed`` (s); None for a report of finished results.
    figures : dict of str to bytes
        PNGs by file name (:data:`FIGURES`).
    thumbs : dict of str to Pair
        The flagged tiles' thumbnails (:func:`mhd.client.thumbs.thumbnails`).
    drawn_at : int, optional
        Tiles the figures show, when fewer than the view's (a live page redraws them less often).
    link : callable, optional
        ``link(image bytes) -> URL`` of an image the live page's server holds; by default images are embedded
        (``data:`` URIs: the page needs no other file).
    """
    ref = link or _uri
    counts = {v.value: 0 for v in Verdict}
    for s in view.tiles:
        counts[s.verdict] = counts.get(s.verdict, 0) + 1
    latencies = [s.rec.latency_ms / 1e3 for s in view.tiles if finite(s.rec.latency_ms) is not None]
    flagged = []
    for s in view.flagged:
        pair = thumbs.get(s.rec.tile)
        flagged.append({
            "tile": s.rec.tile, "verdict": s.verdict, "kind": s.kind, "words": s.words, "reason": s.reason,
            "image": _ref(ref, pair.image) if pair else None, "neighbour": pair.neighbour if pair else None,
            "neighbour_image": _ref(ref, pair.neighbour_image) if pair else None,
        })  # fmt: skip
    return {
        "version": 0,
        "section": view.name,
        "made": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "mhd": __version__,
        "rule": rule_summary(view.rule),
        "measure": {"name": view.measure, "units": view.units, "limit": _num(view.limit)},
        "settings": settings,
        "counts": counts,
        "total": len(view.tiles),
        "progress": None if progress is None else {**progress, "time_to_verdict": _median(latencies[-50:])},
        "colours": {v.value: _css(look(v.value).colour) for v in Verdict},
        "flagged": flagged,
        "max_thumbs": MAX_THUMBS,
        "figures": [
            {"name": n, "caption": c, "src": ref(figures[n]), "drawn_at": len(view.tiles) if drawn_at is None else drawn_at}
            for n, c in FIGURES.items()
            if figures.get(n)
        ],
        "tiles": [_row(s) for s in view.tiles],
    }


def _row(s: Any) -> dict[str, Any]:
    e, rec = s.explanation, s.rec
    return {
        "index": s.index, "tile": rec.tile, "verdict": s.verdict, "kind": s.kind, "recorded": rec.verdict,
        "section": s.fresh.verdict, "value": _num(e.value), "limit": _num(e.limit), "blur": _num(rec.blur),
        "blur_err": _num(rec.blur_err), "density": _num(rec.density, 0), "words": s.words,
        "reason": s.reason,
        "latency": _num(None if rec.latency_ms is None else rec.latency_ms / 1e3), "scored_at": rec.scored_at,
    }  # fmt: skip


def _num(value: float | None, digits: int = 3) -> float | None:
    v = finite(value)
    return None if v is None else round(v, digits)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 2)


def _uri(image: bytes) -> str:
    """A PNG or JPEG as a ``data:`` URI (the page needs no other file)."""
    return f"data:image/{image_kind(image)};base64," + base64.b64encode(image).decode("ascii")


def _ref(ref: Callable[[bytes], str], image: bytes | None) -> str | None:
    return None if image is None else ref(image)


def image_kind(image: bytes) -> str:
    """``"png"`` or ``"jpeg"``: the report's images are one or the other."""
    return "png" if image.startswith(b"\x89PNG") else "jpeg"


def _css(colour: str) -> str:
    from matplotlib.colors import to_hex

    return to_hex(colour)


def state_json(state: dict[str, Any]) -> str:
    """``state`` as JSON safe inside a ``<script>`` element (no ``<``, so no ``</script>``)."""
    text = json.dumps(state, separators=(",", ":"), allow_nan=False, default=_plain)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _plain(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


def render_page(state: dict[str, Any], live: bool = False) -> str:
    """The whole page, ``state`` embedded; ``live`` makes it poll its server for newer states."""
    title = f"mhd: {state['section']}".replace("&", "&amp;").replace("<", "&lt;")
    return _PAGE.replace("__TITLE__", title).replace("__LIVE__", "true" if live else "false").replace("__STATE__", state_json(state))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.muted { color: #666; } .rule { background: #f4f4f4; padding: .5em .8em; border-left: 4px solid #888; }
.counts span { display: inline-block; margin: 0 .4em .3em 0; padding: .25em .7em; border-radius: 1em; color: #fff; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6em; max-width: 680px; }
.card.new { box-shadow: 0 0 0 3px #d62728; }
.card h3 { font-size: 1em; margin: 0 0 .2em; word-break: break-all; } .card .fix { font-weight: 600; color: #b00; }
.pair { display: flex; gap: .6em; } .pair figure { margin: 0; } .pair img { max-width: 320px; display: block; }
figcaption { font-size: .8em; color: #555; word-break: break-all; }
.figs img { max-width: 100%; border: 1px solid #eee; margin-bottom: .6em; }
table { border-collapse: collapse; font-size: .85em; } th, td { padding: .2em .5em; border-bottom: 1px solid #eee; }
th { cursor: pointer; background: #fafafa; position: sticky; top: 0; text-align: left; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.verdict { font-weight: 600; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: 0; }
dl.settings dt { color: #666; } dl.settings dd { margin: 0; word-break: break-all; }
#live { font-size: .8em; padding: .1em .5em; border-radius: .8em; background: #2ca02c; color: #fff; }
#live.stale { background: #999; }
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<div class="muted"><span id="made"></span> <span id="live" hidden>live</span></div>
</header>
<h2>Rule in force</h2>
<p class="rule" id="rule"></p>
<div class="counts" id="counts"></div>
<p id="progress" class="muted"></p>
<h2 id="flagged-title"></h2>
<div class="cards" id="flagged"></div>
<h2>Figures</h2>
<div class="figs" id="figures"></div>
<h2>Every tile</h2>
<table id="tiles"><thead><tr></tr></thead><tbody></tbody></table>
<h2>Settings</h2>
<dl class="settings" id="settings"></dl>
<script id="mhd-state" type="application/json">__STATE__</script>
<script>
"use strict";
const LIVE = __LIVE__;
let state = JSON.parse(document.getElementById("mhd-state").textContent);
let sortKey = "index", sortDir = 1;
const seen = new Set();  // flagged tiles already shown
let rendered = false;
const COLUMNS = [  // key, heading, digits (numbers) or null (text)
  ["index", "#", 0], ["tile", "tile", null], ["verdict", "verdict", null], ["kind", "kind", null],
  ["value", "measure", 2], ["limit", "limit", 2], ["blur", "blur (px)", 2], ["density", "features/MP", 0],
  ["recorded", "recorded", null], ["section", "whole section", null], ["latency", "to verdict (s)", 1],
  ["words", "what to fix", null], ["reason", "why", null]];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmt(v, digits) {
  if (v === null || v === undefined) return "";
  return typeof v === "number" ? v.toFixed(digits === undefined ? 2 : digits) : String(v);
}
function render() {
  const s = state;
  document.getElementById("title").textContent = s.section + ": " + s.total + " tiles";
  document.getElementById("made").textContent = "made " + s.made + " by mhd " + s.mhd;
  document.getElementById("rule").textContent = s.rule;
  const counts = document.getElementById("counts");
  counts.replaceChildren(...Object.entries(s.counts).map(([v, n]) => {
    const c = el("span", v + " " + n);
    c.style.background = s.colours[v] || "#888";
    c.dataset.verdict = v;
    return c;
  }));
  const p = s.progress;
  const ttv = p && p.time_to_verdict !== null ? fmt(p.time_to_verdict, 1) + " s" : "-";
  const rates = p ? `${fmt(p.rate, 1)} verdicts/min; time to verdict ${ttv} (median)` : "";
  document.getElementById("progress").textContent = !p ? "" : p.ended ?
    `The watch ended after ${fmt(p.elapsed / 60, 1)} min (${rates}); ${p.pending} tile(s) not scored yet: the next run scores them.` :
    `${p.pending} tile(s) pending; ${rates}; running ${fmt(p.elapsed / 60, 1)} min`;
  renderFlagged(s);
  const figs = document.getElementById("figures");
  figs.replaceChildren(...s.figures.map(f => {
    const fig = el("figure"); const img = el("img"); img.src = f.src; img.alt = f.caption;
    const when = f.drawn_at === s.total ? "" : `; drawn at ${f.drawn_at} tiles, redrawn every few seconds`;
    fig.append(img, el("figcaption", f.caption + " (" + f.name + when + ")")); return fig;
  }));
  renderTable(s);
  const dl = document.getElementById("settings");
  dl.replaceChildren(...Object.entries(s.settings).flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
}
function renderFlagged(s) {
  document.getElementById("flagged-title").textContent = s.flagged.length ?
    `To re-acquire: ${s.flagged.length} tile(s), in order` : "Nothing to re-acquire";
  const cards = s.flagged.map(f => {
    const card = el("div", null, "card"); card.dataset.tile = f.tile;
    if (LIVE && rendered && !seen.has(f.tile)) card.classList.add("new");  // flagged since the page opened
    card.append(el("h3", f.tile), el("div", f.words, "fix"));
    if (f.reason && f.reason !== f.words) card.append(el("div", f.reason, "muted"));
    const pair = el("div", null, "pair");
    const outlined = f.kind === "partial" ? " (red: the blurred cells)" : "";
    for (const [src, cap] of [[f.image, f.tile + outlined], [f.neighbour_image, "in focus: " + (f.neighbour || "")]]) {
      if (!src) continue;
      const fig = el("figure"); const img = el("img"); img.src = src; img.alt = cap;
      fig.append(img, el("figcaption", cap)); pair.append(fig);
    }
    card.append(pair);
    const none = `no thumbnail: the page shows those of the first ${s.max_thumbs} tiles to re-acquire`;
    if (!f.image && f.verdict !== "error") card.append(el("div", none, "muted"));
    return card;
  });
  document.getElementById("flagged").replaceChildren(...cards);
  s.flagged.forEach(f => seen.add(f.tile));
  rendered = true;
}
function renderTable(s) {
  const head = document.querySelector("#tiles thead tr");
  head.replaceChildren(...COLUMNS.map(([key, label]) => {
    const th = el("th", key === "value" ? `${s.measure.name} (${s.measure.units || "-"})` : label);
    th.dataset.key = key;
    if (key === sortKey) th.className = sortDir > 0 ? "sorted-asc" : "sorted-desc";
    th.onclick = () => { sortDir = key === sortKey ? -sortDir : 1; sortKey = key; renderTable(state); };
    return th;
  }));
  const rows = [...s.tiles].sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return a.index - b.index;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true})) * sortDir;
  });
  document.querySelector("#tiles tbody").replaceChildren(...rows.map(t => {
    const tr = el("tr"); tr.dataset.tile = t.tile; tr.dataset.verdict = t.verdict;
    for (const [key, , digits] of COLUMNS) {
      const numeric = digits !== null;
      const td = el("td", numeric ? fmt(t[key], digits) : fmt(t[key]), numeric ? "num" : key === "verdict" ? "verdict" : "");
      if (key === "verdict") td.style.color = s.colours[t.verdict] || "";
      tr.append(td);
    }
    return tr;
  }));
}
async function poll() {
  const badge = document.getElementById("live");
  try {
    const r = await fetch("state.json?v=" + state.version, {cache: "no-store"});
    if (r.status === 200) { state = await r.json(); render(); }
    badge.classList.remove("stale"); badge.textContent = "live";
  } catch (e) {
    badge.classList.add("stale");
    badge.textContent = "not updating: the watch has stopped; its last page is mhd-report/index.html beside the results (Settings)";
  }
  setTimeout(poll, 1000);
}
render();
if (LIVE) { document.getElementById("live").hidden = false; setTimeout(poll, 1000); }
</script>
</body>
</html>
"""
