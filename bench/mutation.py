"""Mutation testing of the core modules with Cosmic Ray; prints the surviving mutants.

Run by hand, never in CI (it takes 10 to 30 minutes on 2 CPUs)::

    pip install -e '.[test,mutation]'
    python bench/mutation.py                      # every target below
    python bench/mutation.py calibration verdicts # some of them
    python bench/mutation.py --list               # the targets and their tests

Each target is a module, the functions in it that are mutated (Cosmic Ray's
``definition_name``: the innermost enclosing function or class) and the tests
that should catch a change there. For each target, Cosmic Ray
(https://github.com/sixty-north/cosmic-ray) generates every mutant its
operators make in the module (comparison and arithmetic operators swapped,
numbers changed by one, ``and``/``or``, ``True``/``False``/``None``, ``break``
/``continue``, exceptions, loops run zero times, ...); mutants outside the
listed functions, and replacements of one operator by another outside
:data:`PAIRS`, are marked skipped; each remaining mutant is written into
the file, the tests run, and the file is restored.

Everything happens in a temporary copy of the working tree (tracked and
untracked, not ignored files), never in this checkout. The package maps
``mhd.functions`` to the top-level ``functions/`` folder (and ``client/``,
``endpoint/`` likewise), so in the copy ``mhd/`` moves to ``_import/mhd``,
with links to the copy's ``functions/``, ``client/`` and ``endpoint/``,
and ``_import`` goes first on ``PYTHONPATH``: tests,
and the endpoint workers they spawn, import the mutated copy, not the
editable install. (mutmut 3 could not be used for this reason: it names
mutants by their file path, ``functions._nms``, while the tests import
``mhd.functions._nms`` from this checkout, so no mutant would ever run.)

A mutant *survives* when the tests still pass with it: either a test is
missing, or the change does not alter behaviour (an equivalent mutant). The
report lists each survivor as a diff; ``--keep DIR`` keeps the session
databases (``cr-report DIR/<target>.sqlite``, ``cr-html``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    module: str
    functions: tuple[str, ...]
    tests: str
    timeout: float = 60.0


#: What is mutated, and which tests must catch it.
TARGETS = {
    "nms": Target("functions/_nms.py", ("_max3", "_slice", "_merge_plateaus", "local_maxima"), "tests/unit/test_nms.py"),
    "normalize": Target(
        "functions/_normalize.py", ("_check_image", "saturation_limits", "normalize", "estimate_noise"), "tests/unit/test_normalize.py"
    ),
    "confinement": Target(
        "functions/worker/scoring.py",
        ("open_in_root", "_inside", "_check_opened"),
        "tests/unit/test_scoring.py tests/security/test_security.py::test_hostile_paths_are_refused_by_the_deployed_function",
    ),
    "results": Target(
        "client/results.py",
        (
            "read_records",
            "_parse",
            "ResultsLog",
            "__init__",
            "append",
            "extend",
            "superseded",
            "compact",
            "_reopen",
            "_cut_torn_tail",
            "_cut",
        ),
        " ".join(
            (
                "tests/unit/test_results.py",
                "tests/faults/test_results_durable.py",
                "tests/faults/test_faults.py::test_disk_full_at_fsync_keeps_every_earlier_record",
            )
        ),
    ),
    # Only the Ctrl-C tests reach drain (submit and watch runs that end by themselves never do); they start clients
    # and wait for them, hence the longer timeout.
    "drain": Target("client/pipeline.py", ("drain",), "tests/faults/test_interrupt.py", timeout=300.0),
    "calibration": Target(
        "client/calibration.py",
        ("fit", "threshold_density", "log_threshold", "defocus", "blur_threshold"),
        "tests/unit/test_calibration.py tests/commands/test_calibrate_command.py",
    ),
    "contracts": Target(
        "mhd-package/contracts/verdicts.py", ("exit_status", "look"), "tests/unit/test_contracts.py tests/unit/test_judge.py"
    ),
    "calibrate_blur": Target(
        "client/calibration.py",
        ("fit_blur",),
        "tests/unit/test_calibration.py tests/validation/test_sem_focus.py::test_blur_calibration_recovers_a_known_law_and_judges_by_it",
    ),
    "fit_blur": Target(
        "functions/_blur.py",
        ("fit_blur",),
        "tests/unit/test_blur.py tests/unit/test_detect.py tests/validation/test_sem_focus.py",
        timeout=120.0,
    ),
    "grey_table": Target("functions/_normalize.py", ("grey_table",), "tests/unit/test_normalize.py tests/unit/test_detect.py"),
    "candidates": Target("functions/_nms.py", ("candidates",), "tests/unit/test_nms.py tests/unit/test_detect.py"),
    "blur_rule": Target(
        "client/judge.py",
        ("blur_threshold", "_worst_blur"),
        "tests/unit/test_judge.py tests/unit/test_calibration.py tests/commands/test_report_command.py "
        "tests/unit/test_astigmatism.py tests/validation/test_sem_focus.py",
        timeout=120.0,
    ),
    "report": Target(
        "client/report.py", ("section_verdicts", "blur_threshold"), "tests/commands/test_report_command.py tests/unit/test_report.py"
    ),
    "verdicts": Target(
        "client/judge.py",
        (
            "log_density",
            "add",
            "flush",
            "baseline",
            "_judge",
            "_decide",
            "_low_cells",
            "_cell_log_density",
        ),
        " ".join(
            (
                "tests/unit/test_judge.py tests/unit/test_rule.py tests/unit/test_calibration.py",
                "tests/commands/test_calibrate_command.py::test_a_real_defocused_tile_is_judged_oof_by_the_fitted_rule",
                "tests/commands/test_submit_command.py::test_submit_prints_and_records_the_kind_and_angle",
                "tests/commands/test_report_command.py::test_a_calibrated_estimate_keeps_its_units_in_a_report_made_without_the_calibration",
                "tests/commands/test_report_command.py::test_report_lists_what_to_fix_and_kinds_in_the_csv",
                "tests/commands/test_report_command.py::test_report_of_the_scored_section_says_what_to_fix",
            )
        ),
    ),
}


#: Operator pairs kept of Cosmic Ray's all-to-all replacements: each operator by its inverse or its
#: boundary twin (``<`` by ``<=`` and by ``>=``), as in the usual mutation operator sets; the
#: other 170 pairs (``+`` by ``<<``, ``==`` by ``is`` ...) multiply the run time by about four and
#: are almost always killed by the same tests. Every other operator (numbers, ``True``/``False``,
#: ``and``/``or``, ``not``, ``break``/``continue``, exceptions, zero-iteration loops, decorators) is kept.
PAIRS = (
    "Add_Sub Sub_Add Mul_Div Div_Mul FloorDiv_Div Div_FloorDiv Mod_FloorDiv Pow_Mul BitAnd_BitOr BitOr_BitAnd LShift_RShift RShift_LShift "
    "Eq_NotEq NotEq_Eq Lt_LtE LtE_Lt Gt_GtE GtE_Gt Lt_GtE GtE_Lt Gt_LtE LtE_Gt Is_IsNot IsNot_Is In_NotIn NotIn_In "
    "USub_UAdd Delete_Not"
).split()
PAIRED = re.compile(r"core/Replace(Binary|Comparison|Unary)Operator_(.+)")


def kept_operator(name: str) -> bool:
    m = PAIRED.fullmatch(name)
    return m is None or m.group(2) in PAIRS


def copy_tree(dest: Path) -> Path:
    """The working tree (tracked and untracked, not ignored files) under ``dest``, with an import folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    pkg = dest / "_import" / "mhd"
    pkg.parent.mkdir()
    (dest / "mhd-package").rename(pkg)  # the top-level package's __init__.py (pyproject's package-dir)
    for sub in ("functions", "client", "endpoint"):
        (pkg / sub).symlink_to(dest / sub)
    return dest / "_import"


def in_copy(module: str) -> str:
    """A module's path in the copy: ``mhd-package/`` is the import folder's ``mhd/`` there (:func:`copy_tree`)."""
    return "_import/mhd/" + module.removeprefix("mhd-package/") if module.startswith("mhd-package/") else module


def config(target: Target) -> str:
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {target.tests}"
    return (
        "[cosmic-ray]\n"
        f'module-path = "{in_copy(target.module)}"\n'
        f"timeout = {target.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {command!r}\n".replace("'", '"')
        + '\n[cosmic-ray.distributor]\nname = "local"\n'
    )


def skip_outside(db: Path, functions: tuple[str, ...]) -> tuple[int, int]:
    """Mark mutants outside ``functions`` or not of a kept operator skipped; returns (kept, skipped)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    kept = skipped = 0
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        outside = []
        for item in work_db.pending_work_items:
            if all(m.definition_name in functions and kept_operator(m.operator_name) for m in item.mutations):
                kept += 1
            else:
                outside.append(item.job_id)
        skipped = len(outside)
        if outside:
            work_db.set_multiple_results(
                outside, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="outside the targeted functions or operators")
            )
    return kept, skipped


def survivors(db: Path) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(``job id``, diff) of each surviving mutant, and counts per outcome."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    found, counts = [], {"killed": 0, "survived": 0, "incompetent": 0, "error": 0}
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item, result in work_db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome != WorkerOutcome.NORMAL:
                counts["error"] += 1
                continue
            counts[result.test_outcome.value] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                m = item.mutations[0]
                found.append((f"{m.module_path}:{m.start_pos[0]} {m.definition_name} [{m.operator_name}]", result.diff or ""))
    return found, counts


def run_target(name: str, target: Target, tree: Path, env: dict[str, str], keep: Path | None) -> list[tuple[str, str]]:
    cfg = tree / f"mutation-{name}.toml"
    db = (keep or tree) / f"{name}.sqlite"
    cfg.write_text(config(target))
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cr, "init", str(cfg), str(db)], cwd=tree, env=env, check=True)
    kept, skipped = skip_outside(db, target.functions)
    print(f"\n== {name}: {target.module} ({', '.join(target.functions)}): {kept} mutants, tests: {target.tests}", flush=True)
    t0 = time.monotonic()
    baseline = subprocess.run(
        f"{sys.executable} -m pytest -x -q -p no:cacheprovider {target.tests}",
        shell=True,
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if baseline.returncode:
        raise SystemExit(f"{name}: the tests fail on the unmutated copy:\n{baseline.stdout[-3000:]}")
    subprocess.run([*cr, "exec", str(cfg), str(db)], cwd=tree, env=env, check=True)
    found, counts = survivors(db)
    print(
        f"   {counts['killed']} killed, {counts['survived']} survived, {counts['incompetent']} incompetent, "
        f"{counts['error']} errors in {time.monotonic() - t0:.0f} s",
        flush=True,
    )
    for where, diff in found:
        print(f"-- survived: {where}")
        print("\n".join(line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--keep", type=Path, help="keep the Cosmic Ray session databases in this folder")
    args = ap.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name:12} {t.module}: {', '.join(t.functions)}\n{'':12} tests: {t.tests}")
        return
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mhd-mutation-") as tmp:
        tree = Path(tmp) / "tree"
        imports = copy_tree(tree)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(imports), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env["MHD_CONFIG"] = str(Path(tmp) / "cfg" / "config.json")  # never the user's configuration
        check = subprocess.run(
            [sys.executable, "-c", "import mhd.functions._nms as m, mhd.client.results as r; print(m.__file__); print(r.__file__)"],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        )
        if any(not line.startswith(str(tree)) for line in check.stdout.split()):
            raise SystemExit(f"the copy is not what the tests would import:\n{check.stdout}")
        total = {}
        for name in args.targets or TARGETS:
            total[name] = run_target(name, TARGETS[name], tree, env, args.keep)
    print("\n== surviving mutants: " + ", ".join(f"{name} {len(found)}" for name, found in total.items()))


if __name__ == "__main__":
    main()
