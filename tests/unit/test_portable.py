"""mhd.client.portable: the client on Windows and macOS semantics, simulated on Linux where they differ."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_results
from mhd.client import portable, results
from mhd.client.interrupt import stopped_by
from mhd.client.results import ResultsLog, SectionLocked
from mhd.client.watch import Landing
from mhd.contracts.record import TileRecord


def sharing_violation(path) -> PermissionError:
    """What Windows raises when a file another process holds open is opened or replaced."""
    exc = PermissionError(errno.EACCES, "The process cannot access the file because it is being used by another process", str(path))
    exc.winerror = 32
    return exc


def test_the_section_lock_is_exclusive_and_released(tmp_path):
    lock = portable.lock_file(tmp_path / "x.lock")
    with pytest.raises(BlockingIOError):
        portable.lock_file(tmp_path / "x.lock")
    lock.release()
    portable.lock_file(tmp_path / "x.lock").release()


def test_another_process_cannot_take_a_section_while_a_client_writes_it(tmp_path):
    code = (
        "import sys; from mhd.client.results import ResultsLog, SectionLocked\n"
        "try:\n    ResultsLog(sys.argv[1])\nexcept SectionLocked:\n    sys.exit(3)\n"
    )
    with ResultsLog(tmp_path):
        assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120).returncode == 3
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120).returncode == 0


def test_only_a_sharing_violation_means_held_by_another_program(tmp_path):
    assert portable.held_by_another(sharing_violation(tmp_path))
    assert not portable.held_by_another(PermissionError(errno.EACCES, "denied"))  # no read permission: a real error
    assert not portable.held_by_another(FileNotFoundError(errno.ENOENT, "gone"))


def test_the_stop_signals_are_those_the_platform_has(monkeypatch):
    names = {signal.Signals(s).name for s in portable.STOP_SIGNALS}
    assert names == {n for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, n)}
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)  # Windows' Ctrl-Break
    assert stopped_by(21) == "stopped (Ctrl-Break)" and stopped_by(signal.SIGINT) == "interrupted"


def test_signals_are_blocked_only_where_there_is_a_mask(monkeypatch):
    with portable.blocked((signal.SIGTERM,)):
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    monkeypatch.delattr(signal, "pthread_sigmask")
    with portable.blocked((signal.SIGTERM,)):  # Windows: nothing to block, nothing raised
        portable.unblock((signal.SIGTERM,))


def test_a_tile_the_acquisition_software_holds_open_waits_past_give_up_and_is_taken_once_released(tmp_path, monkeypatch):
    """Windows refuses to open a file another program writes: not complete yet, never an error."""
    tile = tmp_path / "tile_1.png"
    tile.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # cut short: not whole while the writer holds it
    os.utime(tile, (time.time() - 60, time.time() - 60))
    held = {tile}
    real_open = open

    def windows_open(path, *args, **kwargs):
        if os.fspath(path) in {os.fspath(p) for p in held}:
            raise sharing_violation(path)
        return real_open(path, *args, **kwargs)

    import mhd.client.watch as watch

    monkeypatch.setattr(watch, "open", windows_open, raising=False)
    landing = Landing(tmp_path, settle=0.0, give_up=0.0)
    for _ in range(3):
        assert landing.poll() == [] and landing.pending == 1
    held.clear()
    (tmp_path / "tile_1.png").write_bytes((tmp_path / "tile_1.png").read_bytes())  # unchanged, released: cut short still
    time.sleep(0.01)
    assert [t.id for t, _ in landing.poll()] == ["tile_1.png"]  # now given up on, as any incomplete file


def test_an_on_oof_command_is_split_as_the_platforms_shell_would():
    """A Windows path keeps its backslashes (POSIX splitting read them as escapes: C:Toolsnotify.exe)."""
    windows = portable.split_command(r'C:\Tools\notify.exe "MHD: out of focus" --sound', windows=True)
    assert windows == ["C:\\Tools\\notify.exe", "MHD: out of focus", "--sound"]
    assert portable.split_command(r'"C:\Program Files\mhd\alert.exe" now', windows=True) == ["C:\\Program Files\\mhd\\alert.exe", "now"]
    assert portable.split_command("notify-send 'MHD: out of focus'", windows=False) == ["notify-send", "MHD: out of focus"]
    assert portable.split_command(r"say a\ b", windows=False) == ["say", "a b"]


def record(tile: str, verdict: str = "ok") -> TileRecord:
    return TileRecord(tile=tile, features=10, density=100.0, verdict=verdict, reason="")


def open_here(path) -> bool:
    """Whether this process has ``path`` open (Linux: its file descriptors in /proc)."""
    fds = "/proc/self/fd"
    return any(os.path.realpath(os.path.join(fds, fd)) == os.path.realpath(path) for fd in os.listdir(fds))


@pytest.fixture
def windows_replace(monkeypatch):
    """``os.replace`` in the results log as Windows does it: refused while either file is open (here, in this process)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to see which files this process has open (Linux)")
    real_replace = os.replace
    done = []

    def replace(src, dst):
        if open_here(src) or open_here(dst):
            raise sharing_violation(dst)
        done.append(os.fspath(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    return done


def test_compaction_closes_the_log_before_it_replaces_it(tmp_path, windows_replace):
    """Windows replaces no open file, this process's own handle included."""
    with ResultsLog(tmp_path) as log:
        log.append(record("a"))
        log.append(record("a", "oof"))
        log.compact()
        log.append(record("b"))
    assert windows_replace == [os.fspath(log.path)]
    lines = read_results(log.path)
    assert [(r["tile"], r["verdict"]) for r in lines] == [("a", "oof"), ("b", "ok")]


def test_a_reader_holding_the_log_leaves_it_uncompacted_and_still_written(tmp_path, windows_replace):
    with ResultsLog(tmp_path) as log:
        log.append(record("a"))
        log.append(record("a", "oof"))
        with open(log.path, "rb"):  # client report reading it meanwhile
            log.compact()  # a warning, not a failure
        log.append(record("b"))
    assert windows_replace == [] and not list(tmp_path.glob("*.tmp"))
    with ResultsLog(tmp_path) as again:
        assert {t: r.verdict for t, r in again.records.items()} == {"a": "oof", "b": "ok"}


def test_a_fresh_start_moves_the_old_log_aside_before_opening_it(tmp_path, windows_replace):
    with ResultsLog(tmp_path) as log:
        log.append(record("a"))
    with ResultsLog(tmp_path, fresh=True) as log:
        assert log.records == {}
        log.append(record("b"))
    [backup] = tmp_path.glob("mhd-results.jsonl.*.bak")
    assert windows_replace == [os.fspath(backup)] and json.loads(backup.read_text())["tile"] == "a"


def test_a_locked_section_is_named_on_every_platform(tmp_path):
    with ResultsLog(tmp_path), pytest.raises(SectionLocked, match="another client is writing this section"):
        ResultsLog(tmp_path)


TESTS = ROOT / "tests"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MHD_WITHOUT_POSIX") == "1", reason="already running without POSIX-only facilities")
def test_the_clients_end_to_end_tests_pass_without_posix_only_facilities():
    """submit, watch stopped by Ctrl-C, a resumed run and the report, in a Python without fcntl, pwd, grp,
    SIGHUP, signal masks and CPU affinities (tests/without_posix/sitecustomize.py), as on Windows."""
    env = {**os.environ, "MHD_WITHOUT_POSIX": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "without_posix"), env.get("PYTHONPATH")]))
    probe = "import signal, sys; print('fcntl' in sys.modules and sys.modules['fcntl'] is None, hasattr(signal, 'SIGHUP'))"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60).stdout.split() == [
        "True",
        "False",
    ], "the simulation is not in effect"
    marked = sorted(str(p) for p in TESTS.rglob("test_*.py") if "@pytest.mark.portable" in p.read_text() and p != Path(__file__).resolve())
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "portable", *marked]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 5 and " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
