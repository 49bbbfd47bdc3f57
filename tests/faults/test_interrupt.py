"""Ctrl-C as a terminal sends it: SIGINT to the client's whole process group, workers included;
SIGTERM as ``systemctl stop`` sends it (the whole control group) and SIGHUP as a closed terminal does.

Each test runs the ``client`` program in a pseudo-terminal, in a session of
its own, and signals the process group (``os.killpg``), as a terminal's
Ctrl-C does; signalling only the client process would miss what the workers
do with it. Checked every time: no traceback anywhere in the output, the
exit status, every line of the results log whole and each tile once, every
task that finished recorded, and no worker process left behind.
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from conftest import TESTS, copy_example, default_stop_signals, isbi_paths
from mhd.client import cli
from mhd.client.calibration import Calibration
from tilegen import encode

OFFLINE_CLIENT = TESTS / "offline_client.py"

pytestmark = [pytest.mark.usefixtures("isolated_config"), pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")]


def example_section(root: Path, copies: str = "abc") -> Path:
    """The example section, copied ``len(copies)`` times (16 tiles each)."""
    for sub in copies:
        copy_example(root / sub, readme=False)
    return root


def calibrated_env(tmp_path: Path, **extra: str) -> dict:
    """Environment of a client with a calibration (verdicts at once: no warm-up holds any back)."""
    cal = Calibration(intercept=math.log(14500.0), slope=-0.53, r=-0.99, n=9, units="um", max_defocus=1.0).save(tmp_path / "cal.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHD_")}
    env.update(MHD_CONFIG=str(tmp_path / "cfg" / "config.json"), MHD_CALIBRATION=str(cal), COLUMNS="100", **extra)
    return env


class Terminal:
    """A command in a pseudo-terminal, in a new session; Ctrl-C = SIGINT to its process group."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, ignoring: tuple[int, ...] = ()):
        """Start ``argv`` with the stop signals handled by default, except ``ignoring`` (as ``nohup`` ignores SIGHUP)."""

        def signals() -> None:
            default_stop_signals()
            for signum in ignoring:
                signal.signal(signum, signal.SIG_IGN)

        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True, preexec_fn=signals
        )
        os.close(slave)
        self.master = master
        self.output = b""
        self.workers: set[int] = set()

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the other end closed
                    return
            elif self.proc.poll() is not None:
                return

    def wait_for(self, condition, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while not condition():
            self.note_workers()
            self.read(0.02)
            if condition():  # what it printed just before it ended counts
                break
            assert self.proc.poll() is None, f"the client ended early:\n{self.text}"
            assert time.monotonic() < end, f"timed out:\n{self.text}"

    def note_workers(self) -> None:
        try:
            self.workers |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.Error:
            pass

    def ctrl_c(self) -> float:
        return self.signal(signal.SIGINT)

    def signal(self, signum: int) -> float:
        self.note_workers()
        os.killpg(self.proc.pid, signum)
        return time.monotonic()

    def finish(self, timeout: float = 60.0) -> int:
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.05)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the client did not exit within {timeout} s:\n{self.text}")
        self.read_to_end(5.0)
        os.close(self.master)
        return self.proc.returncode

    def read_to_end(self, timeout: float) -> None:
        """Read until every process of the session closed the terminal (at most ``timeout`` s after the client
        exited): what multiprocessing's resource tracker prints at its exit comes after the client's."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: no process has the terminal open any more
                    return
                if not chunk:
                    return
                self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def left_behind(self) -> list[int]:
        """Worker processes still alive a moment after the client exited."""
        procs = []
        for pid in self.workers:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:  # gone already: not left behind
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            p.kill()
        return [p.pid for p in alive]


def lines_of(results: Path) -> list[dict]:
    data = results.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a torn last line"
    recs = [json.loads(x) for x in data.splitlines()]
    assert len({r["tile"] for r in recs}) == len(recs), "a tile recorded twice"
    return recs


def count(results: Path) -> int:
    return results.read_bytes().count(b"\n") if results.exists() else 0


def in_flight(text: str) -> tuple[int, int]:
    """(tiles recorded, tiles in flight or held) from the client's interrupt message: held, scored tiles wait for
    the section baseline or for an earlier tile (verdicts are given in the section's order)."""
    m = re.search(
        r"(\d+) tile\(s\) recorded; waiting up to [\d.]+ s for the \d+ task\(s\) in flight \((\d+) tile\(s\)\)"
        r"(?:; (\d+) scored tile\(s\) held for the section baseline or an earlier tile)?",
        flat(text),  # the console wraps long lines
    )
    assert m, text
    return int(m[1]), int(m[2]) + int(m[3] or 0)


def client(*args: str) -> list[str]:
    return [sys.executable, "-m", "mhd.client", *args]


# --------------------------------------------------------------- scoring


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "endpoint"])
def test_ctrl_c_while_scoring_records_every_finished_task_and_exits_130(engine, tmp_path):
    section = example_section(tmp_path / "section")
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path, MHD_DRAIN_TIMEOUT="60")  # time for every task in flight to finish
    args = ["submit", "--dir", str(section), "--batch", "1"]
    argv = client(*args, "--workers", "2") if engine == "local" else [sys.executable, str(OFFLINE_CLIENT), *args]
    term = Terminal(argv, env, tmp_path)
    term.wait_for(lambda: count(results) >= 3)
    t0 = term.ctrl_c()
    status = term.finish()
    took = time.monotonic() - t0
    out = term.text
    assert status == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    recorded, flying = in_flight(out)
    recs = lines_of(results)
    assert 3 <= recorded and len(recs) == recorded + flying  # every task in flight finished and was recorded
    assert re.search(
        rf"{flying} more tile\(s\) recorded( \(\d+ of them held .*? it has\))?; 0 tile\(s\) in flight left for the next run", flat(out)
    ), out
    assert "exit status 130 (interrupted)" in out
    assert took < 30, f"{took:.1f} s from Ctrl-C to exit"
    assert term.left_behind() == []

    again = CliRunner().invoke(
        cli.main, ["submit", "--dir", str(section)], env={"MHD_CALIBRATION": env["MHD_CALIBRATION"], "MHD_WORKERS": "2"}
    )
    assert again.exit_code == 2, again.output
    assert f"{len(recs)} already recorded, {48 - len(recs)} to score" in again.output
    after = lines_of(results)
    assert len(after) == 48 and after[: len(recs)] == recs  # nothing scored twice, nothing lost


def big_tiles(section: Path, n: int, reps: int = 3) -> None:
    """``n`` tiles of real EM texture, ``reps`` x 512 pixels square (1536^2: about 0.15 s of detector each here,
    3072^2: about 0.5 s)."""
    section.mkdir(parents=True)
    for i in range(n):
        (section / f"tile_{i:02d}.tif").write_bytes(encode(np.tile(iio.imread(isbi_paths()[i]), (reps, reps)), "TIFF"))


@pytest.mark.slow
def test_ctrl_c_leaves_slow_tasks_for_the_next_run_and_a_second_ctrl_c_exits_at_once(tmp_path):
    section = tmp_path / "section"
    big_tiles(section, 12, reps=6)  # tasks of three 3072^2 tiles, ~1.5 s: still in flight at the second Ctrl-C
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path, MHD_DRAIN_TIMEOUT="60")
    term = Terminal(client("submit", "--dir", str(section), "--batch", "3", "--workers", "2"), env, tmp_path)
    term.wait_for(lambda: "scoring" in term.text and term.workers and _busy(term.workers))
    term.ctrl_c()
    term.wait_for(lambda: "waiting up to 60 s" in term.text)
    t0 = term.ctrl_c()  # again: do not wait for the tasks in flight
    status = term.finish()
    took = time.monotonic() - t0
    out = term.text
    assert status == 130, out
    clean(out)  # no traceback, and no "leaked semaphore" warning from multiprocessing after the exit
    assert "interrupted again: stopping now" in out
    assert took < 5, f"{took:.1f} s from the second Ctrl-C to exit"
    assert term.left_behind() == []
    done = lines_of(results)  # whole lines, each tile once (maybe none yet)
    assert len(done) < 12

    again = CliRunner().invoke(
        cli.main,
        ["submit", "--dir", str(section), "--workers", "2"],
        env={"MHD_CALIBRATION": env["MHD_CALIBRATION"], "MHD_DRAIN_TIMEOUT": "0.2"},
    )
    assert again.exit_code in (0, 2), again.output
    assert len(lines_of(results)) == 12


def _busy(pids: set[int]) -> bool:
    """Some worker has used a second of CPU (it is scoring)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total = max(total, t.user + t.system)
        except psutil.Error:
            pass
    return total > 1.0


@pytest.mark.portable
@pytest.mark.slow
def test_ctrl_c_with_a_short_drain_exits_within_seconds_and_the_rest_is_scored_next_time(tmp_path):
    section = tmp_path / "section"
    # Two tasks of eight 3072^2 tiles, one per worker: each takes about 4 s here, so both are still in flight
    # when Ctrl-C comes (a worker has used 1 s of CPU) and after the 0.5 s drain. With 0.6 s tasks a fast run
    # finished them inside the drain and nothing was left in flight.
    big_tiles(section, 16, reps=6)
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path, MHD_DRAIN_TIMEOUT="0.5")
    term = Terminal(client("submit", "--dir", str(section), "--batch", "8", "--workers", "2"), env, tmp_path)
    term.wait_for(lambda: "scoring" in term.text and term.workers and _busy(term.workers))
    t0 = term.ctrl_c()
    status = term.finish()
    took = time.monotonic() - t0
    out = term.text
    assert status == 130, out
    assert "Traceback" not in out
    assert took < 5, f"{took:.1f} s from Ctrl-C to exit"
    assert re.search(r"interrupted: \d+ more tile\(s\) recorded; (8|16) tile\(s\) in flight left for the next run", out), out
    assert term.left_behind() == []
    kept = lines_of(results)
    assert len(kept) <= 8
    again = CliRunner().invoke(
        cli.main, ["submit", "--dir", str(section), "--workers", "2"], env={"MHD_CALIBRATION": env["MHD_CALIBRATION"]}
    )
    assert again.exit_code in (0, 2), again.output
    after = lines_of(results)
    assert len(after) == 16 and after[: len(kept)] == kept


# -------------------------------------------------------------- start-up


@pytest.mark.parametrize("delay", [0.3, pytest.param(1.5, marks=pytest.mark.slow)])  # 0.3 s: before the engine starts
def test_ctrl_c_during_start_up_exits_130_quietly(delay, tmp_path):
    """Early (imports) and later (engine and workers starting, first tasks sent)."""
    section = example_section(tmp_path / "section", "a")
    term = Terminal(client("submit", "--dir", str(section), "--workers", "2"), calibrated_env(tmp_path), tmp_path)
    term.read(delay)
    term.ctrl_c()
    status = term.finish(30)
    out = term.text
    assert status == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert term.left_behind() == []
    if (section / "mhd-results.jsonl").exists():
        lines_of(section / "mhd-results.jsonl")  # whatever was recorded is whole


# ------------------------------------------------------------------ watch


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "endpoint"])
def test_ctrl_c_stops_watch_recording_what_finished(engine, tmp_path):
    section = tmp_path / "live"
    section.mkdir()
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path, MHD_DRAIN_TIMEOUT="60")
    args = ["watch", "--dir", str(section), "--poll", "0.1", "--batch", "1"]
    argv = client(*args, "--workers", "1") if engine == "local" else [sys.executable, str(OFFLINE_CLIENT), *args]
    term = Terminal(argv, env, tmp_path)
    term.wait_for(lambda: "watching" in term.text)
    example_section(section, "ab")  # 32 tiles land at once
    term.wait_for(lambda: count(results) >= 2)
    term.ctrl_c()
    status = term.finish()
    out = term.text
    assert status in (0, 2), out  # Ctrl-C is how a watch ends: the section's status
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    recorded, flying = in_flight(out)
    assert len(lines_of(results)) == recorded + flying
    assert "summary" in out
    assert term.left_behind() == []


# ------------------------------------------------------- SIGTERM, SIGHUP

STOP_SIGNALS = [pytest.param(getattr(signal, name), id=name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


def warm_up_env(tmp_path: Path, **extra: str) -> dict:
    """Environment of a client on the relative rule whose warm-up outlasts the run: every verdict is held for the baseline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHD_")}
    env.update(MHD_CONFIG=str(tmp_path / "cfg" / "config.json"), MHD_WARMUP="1000", COLUMNS="100", **extra)
    return env


def scored(term: Terminal, total: int) -> int:
    """Tiles scored so far, from the progress bar (``n/total``)."""
    found = re.findall(rf"\b(\d+)/{total}\b", term.text)
    return max((int(n) for n in found), default=0)


def flat(out: str) -> str:
    """The output without colours and with wrapped lines joined."""
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out))


def clean(out: str) -> None:
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "leaked semaphore" not in out and "resource_tracker" not in out, out


@pytest.mark.slow
@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_sigterm_and_sighup_during_submit_drain_record_the_held_verdicts_and_exit_128_plus_the_signal(signum, tmp_path):
    """As the first Ctrl-C: the tasks in flight finish and are recorded, and so are the verdicts the warm-up held back."""
    section = example_section(tmp_path / "section")
    results = section / "mhd-results.jsonl"
    env = warm_up_env(tmp_path, MHD_DRAIN_TIMEOUT="60")
    # one worker: two scored the 48 tiles in under 2 s, and the run could end between the progress line and the signal
    term = Terminal(client("submit", "--dir", str(section), "--batch", "1", "--workers", "1"), env, tmp_path)
    term.wait_for(lambda: scored(term, 48) >= 3)
    assert count(results) == 0  # all held for the baseline so far
    term.signal(signum)
    status = term.finish()
    out = flat(term.text)
    name = signal.Signals(signum).name
    assert status == 128 + signum, out
    clean(out)
    m = re.search(
        rf"interrupted \({name}\): 0 tile\(s\) recorded; waiting up to 60 s for the \d+ task\(s\) in flight \((\d+) tile\(s\)\); "
        rf"(\d+) scored tile\(s\) held for the section baseline or an earlier tile are recorded then; {name} again",
        out,
    )
    assert m, out
    flying, held = int(m[1]), int(m[2])
    assert held >= 3
    recs = lines_of(results)
    assert len(recs) == held + flying  # every verdict obtained is on disk
    assert re.search(
        rf"{len(recs)} more tile\(s\) recorded \({len(recs)} of them held for the section baseline or an earlier tile, judged with the "
        rf"\d+ tile\(s\) it has\); 0 tile\(s\) in flight left for the next run",
        out,
    ), out
    assert all(r["verdict"] in ("ok", "oof", "empty") for r in recs)
    assert f"exit status {128 + signum}" in out
    assert term.left_behind() == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_sigterm_and_sighup_stop_watch_like_ctrl_c_with_exit_128_plus_the_signal(signum, tmp_path):
    section = tmp_path / "live"
    section.mkdir()
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path, MHD_DRAIN_TIMEOUT="60")
    term = Terminal(client("watch", "--dir", str(section), "--poll", "0.1", "--batch", "1", "--workers", "1"), env, tmp_path)
    term.wait_for(lambda: "watching" in term.text)
    example_section(section, "ab")  # 32 tiles land at once
    term.wait_for(lambda: count(results) >= 2)
    term.signal(signum)
    status = term.finish()
    out = term.text
    assert status == 128 + signum, out
    clean(out)
    recorded, flying = in_flight(out)
    assert len(lines_of(results)) == recorded + flying
    assert "summary" in out and f"exit status {128 + signum}" in out
    assert term.left_behind() == []


@pytest.mark.slow
def test_a_signal_the_client_was_started_ignoring_stays_ignored(tmp_path):
    """``nohup client submit ...``: the closed terminal's SIGHUP neither stops the run nor loses a tile."""
    section = example_section(tmp_path / "section", "ab")
    results = section / "mhd-results.jsonl"
    env = calibrated_env(tmp_path)
    term = Terminal(client("submit", "--dir", str(section), "--batch", "1", "--workers", "2"), env, tmp_path, ignoring=(signal.SIGHUP,))
    term.wait_for(lambda: count(results) >= 2)
    assert term.proc.poll() is None and count(results) < 32  # the signal comes while it scores
    term.signal(signal.SIGHUP)
    status = term.finish()
    out = term.text
    assert status == 2, out  # the example section has out-of-focus tiles; not 129
    clean(out)
    assert "hung up" not in out and "Ctrl-C is ignored" not in out
    assert len(lines_of(results)) == 32
    assert term.left_behind() == []


@pytest.mark.slow
def test_a_client_started_ignoring_ctrl_c_says_how_to_stop_it(tmp_path):
    """``client submit ... &`` from a script starts with SIGINT ignored: the header says so and names a signal that works."""
    section = example_section(tmp_path / "section", "a")
    term = Terminal(
        client("submit", "--dir", str(section), "--workers", "1"), calibrated_env(tmp_path), tmp_path, ignoring=(signal.SIGINT,)
    )
    status = term.finish()
    out = flat(term.text)
    assert status in (0, 2), out
    assert re.search(rf"Ctrl-C is ignored here \(.*\): stop it with kill -TERM {term.proc.pid}\b", out), out


@pytest.mark.slow
def test_sigterm_during_start_up_exits_143_quietly(tmp_path):
    section = example_section(tmp_path / "section", "a")
    term = Terminal(client("submit", "--dir", str(section), "--workers", "2"), calibrated_env(tmp_path), tmp_path)
    term.read(1.5)
    term.signal(signal.SIGTERM)
    status = term.finish(30)
    out = term.text
    assert status == 143, out
    assert "Traceback" not in out
    assert term.left_behind() == []


@pytest.mark.slow
def test_a_second_ctrl_c_during_warm_up_records_the_held_verdicts(tmp_path):
    """Verdicts held for the baseline are judged with what baseline there is and written before the process ends."""
    section = tmp_path / "section"
    big_tiles(section, 10, reps=6)  # ~0.5 s a tile: the tasks in flight outlast the second Ctrl-C
    results = section / "mhd-results.jsonl"
    env = warm_up_env(tmp_path, MHD_DRAIN_TIMEOUT="60")
    term = Terminal(client("submit", "--dir", str(section), "--batch", "1", "--workers", "2"), env, tmp_path)
    term.wait_for(lambda: scored(term, 10) >= 2)
    term.ctrl_c()
    term.wait_for(lambda: "waiting up to 60 s" in flat(term.text))
    held = int(re.search(r"(\d+) scored tile\(s\) held for the section baseline", flat(term.text))[1])
    term.ctrl_c()  # again: do not wait for the tasks in flight
    status = term.finish()
    out = flat(term.text)
    assert status == 130, out
    clean(out)
    m = re.search(
        r"interrupted again: stopping now; (\d+) tile\(s\) held for the section baseline or an earlier tile judged and recorded; "
        r"(\d+) tile\(s\) recorded in all; (\d+) tile\(s\) in flight left for the next run",
        out,
    )
    assert m, out
    assert int(m[1]) >= held >= 2 and int(m[2]) == int(m[1])
    recs = lines_of(results)
    assert len(recs) == int(m[1]) and len(recs) + int(m[3]) <= 10
    assert term.left_behind() == []


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not os.path.exists("/proc/self/fd"), reason="SIGHUP and /proc")
def test_sighup_after_the_terminal_closed_still_drains_and_records(tmp_path):
    """The ssh or tmux session is gone (every write to the terminal fails): the held verdicts are recorded all the same."""
    section = example_section(tmp_path / "section")
    results = section / "mhd-results.jsonl"
    # one worker: two scored the 48 small tiles in under 2 s, and the run could end before the signal
    term = Terminal(client("submit", "--dir", str(section), "--batch", "1", "--workers", "1"), warm_up_env(tmp_path), tmp_path)
    term.wait_for(lambda: scored(term, 48) >= 3)
    term.note_workers()
    os.close(term.master)  # the terminal goes away
    os.killpg(term.proc.pid, signal.SIGHUP)
    try:
        status = term.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(term.proc.pid, signal.SIGKILL)
        pytest.fail("the client did not exit within 60 s of SIGHUP")
    assert status == 129
    recs = lines_of(results)
    assert len(recs) >= 3 and all(r["verdict"] in ("ok", "oof", "empty") for r in recs)
    assert "Traceback" not in (section / "mhd-client.log").read_text()
    assert term.left_behind() == []
