"""Does the blur hold? Shot noise, sections with a few defocused tiles, and the diagnosis of each.

Commands::

    python bench/blur_validation.py dose        # blur with shot noise added minus blur without: ISBI and SEM slow scans
    python bench/blur_validation.py sections    # verdicts in sections: in-focus tiles plus a few behind round disks
    python bench/blur_validation.py diagnosis   # kinds: round disks -> defocus, elliptical probes -> astigmatism;
                                                #   real fast/slow pairs; the workers' count
    python bench/blur_validation.py drift       # the SEM slow scans in the order they were taken, by their record

Data: ``MHD_ISBI_DIR`` (default ``tests/data/isbi2012``, 30 TEM slices),
``MHD_KRISS_DIR`` (default ``tests/data/sem-kriss``, 8 pairs; ``../shared/data/sem-kriss``
holds 25) and, with ``--extra DIR``, folders of real tiles of your own (any format
``client`` reads; each folder one set of fields). The project's own held-out check used
pairs 026-050 of the same public SEM set (``time/``: the 30 us scans; not vendored).

Every tile is scanned with ``mhd.functions.simulate.sem_scan``: a round disk probe
of radius ``r`` px (0: in focus, as acquired), Poisson noise at ``dose`` electrons per
white pixel (``inf``: none added). Noise cannot blur, so any move of ``blur`` with the
dose is the estimate's error.

**dose** prints, per set, the median and the largest ``|blur(dose) - blur(no added
noise)|`` over the tiles in focus and behind 2, 3 and 4 px disks, at 20 and 6 e/px
(the goals: median within 0.15 px and every tile within 0.3 px at 20 e/px, median
within 0.2 px at 6 e/px), and how often that move is within twice the two
``blur_err`` combined.

**sections** builds, per set and ``--reps`` times, a section of the set's fields:
one behind a disk of each of 1.5, 2 and 3 px, the others in focus, shuffled; at one
dose (20 e/px) and at a dose drawn for each tile (log-uniform 6-80 e/px). Each is judged
by ``client``'s rule (:class:`mhd.client.judge.Judge`, defaults; ``--rule
KEY=VALUE`` to try others) in its order, and the table gives the in-focus tiles
called out of focus and the disks flagged, by radius (goals: none, 2 px >= 90 %,
3 px all). A section of the real fast and slow scans of the same fields (100 ns and
30 us, in focus as acquired) with a few slow scans behind disks at the fast scans'
noise is judged the same way.

**diagnosis** prints, of the flagged tiles of sections with round disks (2-3 px) and
with elliptical probes (2:1 and 3:1, 3 px major, any angle), the share called
``defocus`` and ``astigmatism`` (goals: >= 95 % of round, >= 90 % of elliptical), the
median blur difference of the real fast/slow pairs (goal: <= 0.15 px; the scan's
smear is reported apart), and whether one section's verdicts are the same when its
records arrive in another order (as with two workers).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mhd.client.judge import Judge
from mhd.client.rule import Rule, parse_threshold, thresholds
from mhd.contracts.record import TileRecord
from mhd.functions.simulate import sem_scan
from mhd.functions.worker.scoring import measure
from mhd.functions.worker.tileio import read_tile, trim_frame

ROOT = Path(__file__).resolve().parents[1]
KRISS = Path(os.environ.get("MHD_KRISS_DIR", ROOT / "tests" / "data" / "sem-kriss"))
ISBI = Path(os.environ.get("MHD_ISBI_DIR", ROOT / "tests" / "data" / "isbi2012"))
#: Doses of a section whose tiles differ (log-uniform), electrons per white pixel.
DOSE_RANGE = (6.0, 80.0)


def _read(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        image = read_tile(fh, 1 << 28)
    return trim_frame(image.astype(np.uint8) if image.dtype.kind == "f" and image.max() <= 255 else image)


#: The file of each field of each set (:func:`load_sets`).
FILES: dict[str, list[Path]] = {}
#: Blur (px) a slow SEM scan's defocus adds by its microscope's record (``bench/focus_record.py``): up to this it is
#: in focus, from :data:`DEFOCUSED` out of focus (a 1.7 px disk adds 0.85 px); between, not counted.
IN_FOCUS = 0.5
DEFOCUSED = 0.85


def load_sets(extra: list[str]) -> dict[str, list[np.ndarray]]:
    """The sets of fields: ISBI slices, the SEM slow scans (30 us, as acquired), and ``extra`` folders."""
    FILES["isbi"] = sorted(ISBI.glob("*.png"))
    FILES["sem-slow"] = sorted((KRISS / "time").glob("slow_30us_*.png"))
    for folder in extra:
        FILES[Path(folder).name] = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    return {name: [iio.imread(f) if name == "isbi" else _read(f) for f in files] for name, files in FILES.items()}


def record_focus(originals: Path | None) -> dict[tuple[str, int], str]:
    """``"in focus"``, ``"defocused"`` or ``"between"`` for each SEM scan of :data:`FILES` by its microscope's record
    (:func:`focus_record.record_defocus`, fitted to the slow scans found); fields without a record are not in it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from focus_record import record_defocus

    added = record_defocus(originals)
    out = {}
    for name, files in FILES.items():
        for i, f in enumerate(files):
            m = re.fullmatch(r"(?:slow_30us|30us|fast_100ns|100ns)_(\d{3})", f.stem)  # a fast scan: its field's record
            if m and m.group(1) in added:
                a = added[m.group(1)]
                out[name, i] = "in focus" if a <= IN_FOCUS else "defocused" if a >= DEFOCUSED else "between"
    return out


def _scored(key: tuple, image: np.ndarray) -> dict:
    """A tile's record (JSON) after a scan with the key's probe and dose."""
    name, index, r, r_minor, angle, dose, seed = key
    scan = sem_scan(image, r, radius_minor=r_minor, angle=angle, dose=dose, rng=seed) if (r > 0 or np.isfinite(dose)) else image
    return measure(f"{name}/{index:03d}", scan, {}).to_json()


#: ``--cache FILE``: records already scored, by key (a pickle), so that other rules can be tried without scoring again.
CACHE: dict = {"path": None}


def score_all(keys: dict[tuple, np.ndarray]) -> dict[tuple, TileRecord]:
    """Records of every key (two processes; those in the ``--cache`` file are not scored again)."""
    path = CACHE["path"]
    known = pickle.loads(path.read_bytes()) if path is not None and path.exists() else {}
    todo = [k for k in keys if k not in known]
    with ProcessPoolExecutor(2) as pool:
        known.update(zip(todo, pool.map(_scored, todo, [keys[k] for k in todo], chunksize=2)))
    if path is not None:
        path.write_bytes(pickle.dumps(known))
    return {k: TileRecord.from_json(known[k]) for k in keys}


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def judged(records: list[TileRecord], rule: Rule, order: list[int] | None = None) -> list[TileRecord]:
    """A section's records judged as ``client`` judges them, in ``order`` of arrival (section order when None)."""
    judge = Judge(rule)
    ids = [f"{i:03d}" for i in range(len(records))]
    judge.expect(ids)
    out = []
    for i in order if order is not None else range(len(records)):
        out += judge.add(replace(records[i], tile=ids[i]))
    out += judge.flush()
    by_id = {r.tile: r for r in out}
    return [by_id[i] for i in ids]


# --------------------------------------------------------------------- dose


def cmd_dose(args: argparse.Namespace) -> None:
    sets = load_sets(args.extra)
    radii, doses = (0.0, 2.0, 3.0, 4.0), (np.inf, 20.0, 6.0)
    keys = {
        (name, i, r, None, 0.0, d, _seed(name, i, r, d)): im
        for name, ims in sets.items()
        for i, im in enumerate(ims[: args.fields])
        for r in radii
        for d in doses
    }
    recs = score_all(keys)
    print("| set | tiles | 20 e/px: median move | largest | within 2 blur_err | 6 e/px: median move | largest |")
    print("|---|---|---|---|---|---|---|")
    for name, ims in sets.items():
        moves: dict[float, list[float]] = {20.0: [], 6.0: []}
        covered = []
        for i in range(min(len(ims), args.fields)):
            for r in radii:
                clean = recs[(name, i, r, None, 0.0, np.inf, _seed(name, i, r, np.inf))]
                for d in (20.0, 6.0):
                    noisy = recs[(name, i, r, None, 0.0, d, _seed(name, i, r, d))]
                    if clean.blur is None or noisy.blur is None:
                        continue
                    moves[d].append(noisy.blur - clean.blur)
                    if d == 20.0:
                        covered.append(abs(noisy.blur - clean.blur) <= 2 * np.hypot(noisy.blur_err or 0, clean.blur_err or 0))
        m20, m6 = np.array(moves[20.0]), np.array(moves[6.0])
        print(
            f"| {name} | {len(m20)} | {np.median(m20):+.2f} | {np.abs(m20).max():.2f} | {np.mean(covered):.0%} "
            f"| {np.median(m6):+.2f} | {np.abs(m6).max():.2f} |"
        )


# ----------------------------------------------------------------- sections


def _sections(sets: dict, reps: int, probes: list[tuple[float, float | None]]) -> list[tuple[str, list[tuple[tuple, float]]]]:
    """Sections of each set: one field behind each probe ``(major, minor)``, the rest in focus; one dose and mixed."""
    out = []
    for name, ims in sets.items():
        for mode in ("20", "mixed"):
            for rep in range(reps):
                rng = np.random.default_rng(_seed(name, mode, rep))
                order = rng.permutation(len(ims))
                tiles = []
                for j, i in enumerate(order):
                    r, r_minor = probes[j] if j < len(probes) else (0.0, None)
                    angle = float(rng.uniform(0, 180)) if r_minor is not None else 0.0
                    dose = 20.0 if mode == "20" else float(np.exp(rng.uniform(*np.log(DOSE_RANGE))))
                    tiles.append(((name, int(i), r, r_minor, angle, dose, _seed(name, i, r, r_minor, dose, rep)), r))
                rng.shuffle(tiles)
                out.append((f"{name}, {'20 e/px' if mode == '20' else 'doses 6-80'}", tiles))
    return out


def _fast_slow_sections(reps: int) -> list[tuple[str, list[tuple[tuple, float]]]]:
    """Real fast and slow scans of the same fields in focus, and a few slow scans behind disks with noise like the
    fast scans' (20 e/px)."""
    out = []
    n = len(list((KRISS / "time").glob("slow_30us_*.png")))
    for rep in range(reps):
        rng = np.random.default_rng(_seed("fast-slow", rep))
        order = rng.permutation(n)
        tiles = [(("sem-fast", int(i), 0.0, None, 0.0, np.inf, 0), 0.0) for i in order[: n // 2]]
        tiles += [(("sem-slow", int(i), 0.0, None, 0.0, np.inf, 0), 0.0) for i in order[n // 2 : n - 3]]
        tiles += [(("sem-slow", int(i), r, None, 0.0, 20.0, _seed(i, r, rep)), r) for i, r in zip(order[n - 3 :], (1.5, 2.0, 3.0))]
        rng.shuffle(tiles)
        out.append(("sem fast + slow", tiles))
    return out


def _run(args: argparse.Namespace, probes: list[tuple[float, float | None]], fast_slow: bool) -> tuple[list, dict]:
    sets = load_sets(args.extra)
    if fast_slow:
        FILES["sem-fast"] = sorted((KRISS / "time").glob("fast_100ns_*.png"))
        sets_all = {**sets, "sem-fast": [_read(f) for f in FILES["sem-fast"]]}
    secs = _sections(sets, args.reps, probes) + (_fast_slow_sections(args.reps) if fast_slow else [])
    source = sets_all if fast_slow else sets
    keys = {k: source[k[0]][k[1]] for _, tiles in secs for k, _ in tiles}
    return secs, score_all(keys)


def _rule(args: argparse.Namespace) -> Rule:
    fields = {f.name: f for f in thresholds()}
    return Rule(**{k: parse_threshold(fields[k], v) for k, v in args.rule})


def cmd_sections(args: argparse.Namespace) -> None:
    radii = (1.5, 2.0, 3.0)
    secs, recs = _run(args, [(r, None) for r in radii], fast_slow=True)
    focus = record_focus(args.originals)
    rule = _rule(args)
    table: dict[str, dict[object, list[int]]] = {}
    for name, tiles in secs:
        verdicts = judged([recs[k] for k, _ in tiles], rule)
        row = table.setdefault(name, {c: [0, 0] for c in ("in focus", "defocused", "between", *radii)})
        for (key, r), rec in zip(tiles, verdicts):
            cls = r if r > 0 else focus.get((key[0], key[1]), "in focus")
            row[cls][0] += rec.verdict == "oof"
            row[cls][1] += 1
            if cls == "in focus" and rec.verdict == "oof" and args.verbose:
                print(f"  in focus, called oof: {name} {FILES[key[0]][key[1]].name}: {rec.reason}")
    print(
        "| section | in-focus tiles called oof | defocused by the record, flagged | between, flagged | 1.5 px disks flagged | 2 px | 3 px |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c][0]} of {row[c][1]}" for c in ("in focus", "defocused", "between", *radii)) + " |")


# -------------------------------------------------------------------- drift


def cmd_drift(args: argparse.Namespace) -> None:
    """The SEM slow scans in the order their microscope took them (the field number), judged as one section."""
    sets = load_sets(args.extra)
    focus = record_focus(args.originals)
    fields = sorted((FILES[name][i].stem[-3:], name, i) for name, i in focus)
    print("| dose | rule | in focus, called oof | defocused by the record, flagged | between, flagged | flagged fields |")
    print("|---|---|---|---|---|---|")
    for dose in (np.inf, 20.0):
        keys = {(name, i, 0.0, None, 0.0, dose, _seed(name, i, dose)): sets[name][i] for _, name, i in fields}
        records = list(score_all(keys).values())
        for q in args.focus:
            out = judged(records, replace(_rule(args), blur_focus=q))
            counts = {c: [0, 0] for c in ("in focus", "defocused", "between")}
            for (_, name, i), rec in zip(fields, out):
                counts[focus[name, i]][0] += rec.verdict == "oof"
                counts[focus[name, i]][1] += 1
            flagged = " ".join(f for (f, _, _), rec in zip(fields, out) if rec.verdict == "oof")
            cells = " | ".join(f"{a} of {b}" for a, b in counts.values())
            print(f"| {'as acquired' if dose == np.inf else f'{dose:g} e/px'} | blur_focus {q:g} | {cells} | {flagged} |")


# ---------------------------------------------------------------- diagnosis


def cmd_diagnosis(args: argparse.Namespace) -> None:
    rule = _rule(args)
    print("| probes | set | flagged | called defocus | astigmatism | partial |")
    print("|---|---|---|---|---|---|")
    focus: dict = {}
    for label, probes in (("round disks 2, 3 px", [(2.0, None), (3.0, None)]), ("elliptical 2:1, 3:1 (3 px)", [(3.0, 1.5), (3.0, 1.0)])):
        secs, recs = _run(args, probes, fast_slow=False)
        focus = focus or record_focus(args.originals)
        by_set: dict[str, dict[str, int]] = {}
        for name, tiles in secs:
            for (key, r), rec in zip(tiles, judged([recs[k] for k, _ in tiles], rule)):
                if r > 0:
                    # SEM fields the record calls in focus, and the others, apart (an ellipse on a defocused field is both)
                    cls = focus.get((key[0], key[1]))
                    where = "" if cls is None else ", in focus by the record" if cls == "in focus" else ", not in focus by the record"
                    row = by_set.setdefault(name.split(",")[0] + where, {"flagged": 0, "total": 0})
                    row["total"] += 1
                    if rec.verdict == "oof":
                        row["flagged"] += 1
                        row[rec.kind] = row.get(rec.kind, 0) + 1
        for name, row in by_set.items():
            shares = " | ".join(f"{row.get(k, 0) / max(row['flagged'], 1):.0%}" for k in ("defocus", "astigmatism", "partial"))
            print(f"| {label} | {name} | {row['flagged']} of {row['total']} | {shares} |")
    diffs, smear = [], []
    for fast in sorted((KRISS / "time").glob("fast_100ns_*.png")):
        slow = fast.with_name(fast.name.replace("fast_100ns", "slow_30us"))
        f, s = (TileRecord.from_json(measure(p.name, _read(p), {}).to_json()) for p in (fast, slow))
        diffs.append(f.blur - s.blur)
        smear.append((f.scan_smear, s.scan_smear))
    sm = np.array(smear)
    print(
        f"real fast/slow pairs ({len(diffs)}): blur(fast) - blur(slow) median {np.median(diffs):+.2f} px "
        f"(largest {np.max(np.abs(diffs)):.2f}); scan smear median {np.median(sm[:, 0]):.2f} px fast, {np.median(sm[:, 1]):.2f} slow"
    )
    secs, recs = _run(args, [(1.5, None), (2.0, None), (3.0, None)], fast_slow=False)
    same = total = 0
    for _, tiles in secs:
        records = [recs[k] for k, _ in tiles]
        a = judged(records, rule)
        rng = np.random.default_rng(_seed(tiles[0][0]))
        order = list(range(len(records)))
        for i in range(0, len(order) - 1, 2):  # neighbours swapped at random, as two workers finish them
            if rng.random() < 0.5:
                order[i], order[i + 1] = order[i + 1], order[i]
        b = judged(records, rule, order)
        same += sum(x.verdict == y.verdict and x.kind == y.kind for x, y in zip(a, b))
        total += len(a)
    print(f"the same sections, records arriving in another order: {same} of {total} verdicts the same")


def _param(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip(), value.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    for name, fn, helptext in (
        ("dose", cmd_dose, "blur with shot noise added minus blur without"),
        ("sections", cmd_sections, "verdicts in sections with a few defocused tiles"),
        ("diagnosis", cmd_diagnosis, "verdict kinds, real fast/slow pairs, arrival order"),
        ("drift", cmd_drift, "the SEM slow scans in the order they were taken, split by their record"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--extra", action="append", default=[], metavar="DIR", help="a folder of real tiles of your own (repeatable)")
        p.add_argument("--reps", type=int, default=10, help="sections per set and dose")
        p.add_argument("--fields", type=int, default=30, help="dose: fields per set")
        p.add_argument("--rule", type=_param, action="append", default=[], metavar="KEY=VALUE", help="verdict threshold (repeatable)")
        p.add_argument("-v", "--verbose", action="store_true", help="sections: print each false alarm's reason")
        p.add_argument("--cache", type=Path, help="keep the records scored in this file, to try other rules (--rule) quickly")
        p.add_argument("--originals", type=Path, help="the SEM source's Data/ folder, for the record of fields not vendored")
        p.add_argument("--focus", type=float, action="append", help="drift: blur_focus values to compare (default 0.5 and 0.25)")
        p.set_defaults(fn=fn)
    args = ap.parse_args()
    args.focus = args.focus or [0.5, 0.25]
    CACHE["path"] = args.cache
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
