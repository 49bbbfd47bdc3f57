"""The ``client`` command: thin click commands over the :mod:`mhd.client` modules.

Exit statuses (every command that judges tiles)::

    0    every tile ok (or empty)
    1    some tile failed (an error), or a user error ("Error: ..." on stderr)
    2    out-of-focus tiles, and no errors (errors take precedence)
    64   usage error (unknown option, missing argument)
    130  interrupted (Ctrl-C) before the run finished
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from mhd import __version__

from . import config as config_mod

__all__ = ["main"]

#: Exit status of usage errors (BSD sysexits EX_USAGE), so that 2 means only "out of focus".
EXIT_USAGE = 64

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """A group whose usage errors exit with :data:`EXIT_USAGE` instead of click's 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _load_config(**overrides: Any) -> config_mod.Config:
    try:
        return config_mod.load().override(**overrides)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def detector_options(fn: Callable) -> Callable:
    """Options that set detector parameters (only those given are sent)."""
    opts = [
        click.option("--n-bin", type=click.IntRange(2, 64), help="DoG levels (scales)  [detector default 16]"),
        click.option("--min-t", type=click.FloatRange(0.1, min_open=False), help="smallest Gaussian scale t, px  [1.0]"),
        click.option("--max-t", type=click.FloatRange(0.1), help="largest Gaussian scale t, px  [8.0]"),
        click.option("--threshold", type=click.FloatRange(0.0), help="response threshold (normalised units)  [0.02]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _params(kwargs: dict) -> dict:
    """Detector parameters given on the command line (popped from ``kwargs``)."""
    return {k: v for k in ("n_bin", "min_t", "max_t", "threshold") if (v := kwargs.pop(k)) is not None}


def _section(path: Path) -> Path:
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a folder")
    return path.resolve()


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="mhd client")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Out-of-focus detection for electron-microscopy tiles, at the instrument.

    Tiles are scored by the MHD detector (multi-scale histologic features):
    on a local engine by default, or on a Globus Compute GPU endpoint once
    'client register' has stored one. Verdicts: ok, oof (out of focus),
    empty (no tissue) and error.

    Exit status: 0 all ok, 1 errors (or a user error), 2 out-of-focus tiles,
    64 usage error, 130 interrupted.

    Example:

        client submit --dir examples/section_042
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


# ------------------------------------------------------------------ score


@main.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (path, features, density, grid, shape, ms, error).")
@click.option("--backend", type=click.Choice(["auto", "numpy", "cupy"]), default="auto", show_default=True, help="Array backend of the detector.")
@detector_options
def score(files: tuple[Path, ...], as_json: bool, backend: str, **kwargs: Any) -> None:
    """Score image files in this process (no endpoint, no verdicts).

    A file that cannot be read or scored gets its error; the others are
    still scored. Exit status 1 when any file failed.

    Example:

        client score examples/section_042/tile_r0_c0.png --json
    """
    from .score import score_file

    params = _params(kwargs)
    console = _console()
    failed = 0
    for path in files:
        rec = score_file(path, backend=backend, **params)
        failed += rec["error"] is not None
        if as_json:
            click.echo(json.dumps(rec))
        elif rec["error"]:
            console.print(f"[bold magenta]ERROR[/] {rec['error']}")
        else:
            console.print(f"{path}  {rec['features']:6d} features  {rec['density'] / 1000:7.1f}k/MP  {rec['shape'][0]}x{rec['shape'][1]}  {rec['ms']:.0f} ms  [dim]{rec['backend']}[/]")
    if failed:
        sys.exit(1)


# ----------------------------------------------------------------- submit


def _run_options(fn: Callable) -> Callable:
    """Options shared by submit and watch."""
    opts = [
        click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Section folder."),
        click.option("--backend", type=click.Choice(["auto", "local", "globus"]), help="Where tasks run  [config: auto]"),
        click.option("--transport", type=click.Choice(["auto", "inline", "shared", "globus"]), help="How tiles reach the function  [config: auto]"),
        click.option("--workers", type=click.IntRange(1, 64), help="Local backend worker processes."),
        click.option("--batch", type=click.IntRange(1, 1024), help="Tiles per scoring task."),
        click.option("--on-oof", metavar="CMD", help="Run CMD TILE_PATH for each out-of-focus tile (no shell; MHD_TILE/MHD_REASON set)."),
        click.option("--no-calibration", is_flag=True, help="Use the relative rule even if a calibration is stored."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return detector_options(fn)


def _rule(cfg: config_mod.Config, no_calibration: bool):
    from .verdicts import rule_from_config

    try:
        return rule_from_config(cfg, use_calibration=not no_calibration)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _transfer_client():
    from .auth import transfer_client

    return transfer_client()


@main.command(context_settings=CONTEXT)
@_run_options
@click.option("--rescore", is_flag=True, help="Score every tile again (the old results are kept as a .bak file).")
@click.option("-a", "--all", "show_ok", is_flag=True, help="Print a line for ok tiles too.")
def submit(directory: Path, backend: str | None, transport: str | None, workers: int | None, batch: int | None, on_oof: str | None, no_calibration: bool, rescore: bool, show_ok: bool, **kwargs: Any) -> None:
    """Score every tile of a section and report out-of-focus tiles.

    Tiles (TIFF, PNG, BMP, JPEG; recursive) are taken in natural order of
    their paths. Verdicts are printed as they arrive and appended to
    DIR/mhd-results.jsonl; a re-run scores only tiles not yet recorded (and
    retries errors). Exit status: 0 all ok, 2 out-of-focus tiles, 1 errors.

    Example:

        client submit --dir examples/section_042     # exits 2: the example has OOF tiles
    """
    from .results import SectionLocked
    from .submit import run_section, section_summary

    params = _params(kwargs) or None
    section = _section(directory)
    cfg = _load_config(backend=backend, transport=transport, workers=workers, batch=batch)
    console = _console()
    try:
        outcome = run_section(section, cfg, console, rule=_rule(cfg, no_calibration), rescore=rescore, params=params, on_oof=on_oof, show_ok=show_ok, transfer_client=_transfer_client)
    except (ValueError, OSError, SectionLocked) as exc:
        raise click.ClickException(str(exc)) from None
    section_summary(console, section, outcome)
    sys.exit(outcome.exit_status)


# -------------------------------------------------------------- config etc


@main.command("config", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {key: {value, source}}.")
def config_cmd(as_json: bool) -> None:
    """Show the effective configuration and where each value comes from.

    Values come from defaults, the file ($MHD_CONFIG or
    ~/.config/mhd/config.json), MHD_<KEY> environment variables, then
    command-line options, each overriding the one before.

    Example:

        MHD_OOF_K=4 client config
    """
    from rich.table import Table

    cfg = _load_config()
    if as_json:
        click.echo(json.dumps({k: {"value": cfg.values[k], "source": cfg.sources[k]} for k in cfg.values}, indent=2))
        return
    table = Table(title=f"configuration (file: {config_mod.config_path()})", title_justify="left")
    for col in ("key", "value", "source", "meaning"):
        table.add_column(col, overflow="fold")
    for key, spec in config_mod.KEYS.items():
        src = cfg.sources[key]
        table.add_row(key, "" if cfg.values[key] is None else str(cfg.values[key]), f"[dim]{src}[/]" if src == "default" else src, spec.help)
    table.add_row("(calibration)", str(cfg.calibration_path), "present" if cfg.calibration_path.exists() else "[dim]absent: relative rule[/]", "fitted by client calibrate")
    _console().print(table)
