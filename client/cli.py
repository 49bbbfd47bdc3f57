"""The ``client`` command: thin click commands over the :mod:`mhd.client` modules.

Exit statuses (every command that judges tiles)::

    0    every tile ok (or empty)
    1    some tile failed (an error), or a user error ("Error: ..." on stderr)
    2    out-of-focus tiles, and no errors (errors take precedence)
    64   usage error (unknown option, missing argument)
    130  interrupted (Ctrl-C) before the run finished
    143  terminated (SIGTERM: systemctl stop, kill, timeout); drained as for Ctrl-C
    129  hung up (SIGHUP: the terminal or ssh session closed); drained as for Ctrl-C

The terminal gets one line per problem, never a traceback; ``submit`` and
``watch`` also append everything, with the details (remote tracebacks, the
cause of an unexpected failure), to ``DIR/mhd-client.log``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from mhd import __version__
from mhd.contracts.files import CALIBRATION_PLOT, SWEEP_PLOT
from mhd.contracts.formats import IMAGE_SUFFIXES
from mhd.contracts.limits import WORKER_LIMITS
from mhd.params import Param, cli_params, validate

from . import config as config_mod
from .logs import save_traceback, section_log, terminal_logging

__all__ = ["main"]

#: Exit status of usage errors (BSD sysexits EX_USAGE), so that 2 means only "out of focus".
EXIT_USAGE = 64

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def prog_name() -> str:
    """The name the program was started as (``mhd`` or ``client``); ``client`` under ``python -m mhd.client``."""
    name = os.path.basename(sys.argv[0]).removesuffix(".exe")
    return "client" if not name or name.endswith(".py") or name == "-c" else name


def _prog(ctx: click.Context) -> str:
    """The program's name as its usage line shows it."""
    return ctx.find_root().info_name or "client"


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
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # unforeseen, outside a logged run: one line here, the traceback in a file
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} (traceback in {save_traceback()})") from None


def _console() -> Console:
    """Rich output on a terminal; plain, unwrapped lines otherwise (logs, ``| tee``, journals)."""
    if sys.stdout.isatty():
        return Console(highlight=False, soft_wrap=False)
    return Console(highlight=False, soft_wrap=True, no_color=True)


def _load_config(**overrides: Any) -> config_mod.Config:
    try:
        return config_mod.load().override(**overrides)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _param_option(spec: Param) -> Callable:
    """The option of one detector parameter, from its definition in :mod:`mhd.params`.

    No click default: only the parameters given are sent; the help shows the detector's.
    """
    kind = click.IntRange if spec.kind == "int" else click.FloatRange
    unit = f" {spec.unit}" if spec.unit else ""
    return click.option(spec.option, spec.name, type=kind(spec.lo, spec.hi), help=f"{spec.help}  [detector default {spec.default:g}{unit}]")


def detector_options(fn: Callable) -> Callable:
    """Options that set detector parameters (only those given are sent)."""
    for spec in reversed(cli_params()):
        fn = _param_option(spec)(fn)
    return fn


def _params(kwargs: dict) -> dict:
    """Detector parameters given on the command line (popped from ``kwargs``), checked together.

    Raises
    ------
    click.UsageError
        When they contradict each other (``--min-t`` not below ``--max-t``).
    """
    given = {p.name: v for p in cli_params() if (v := kwargs.pop(p.name)) is not None}
    try:
        return validate(given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _section(path: Path) -> Path:
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a folder")
    return path.resolve()


@click.group("client", cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="mhd client")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Out-of-focus detection for electron-microscopy tiles, at the instrument.

    Tiles are scored by the MHD detector (multi-scale histologic features):
    on a local engine by default, or on a Globus Compute GPU endpoint once
    'client register' has stored one. Verdicts: ok, oof (out of focus),
    empty (no tissue) and error.

    Exit status: 0 all ok, 1 errors (or a user error), 2 out-of-focus tiles,
    64 usage error, 130 interrupted (143 by SIGTERM, 129 by SIGHUP).

    Example:

    \b
        client submit --dir examples/section_042
    """
    terminal_logging(verbose)


def _run_logged(section: Path, run: Callable[[], Any]) -> Any:
    """``run()`` with the section log (in ``section``, the results folder); failures become one-line user errors."""
    from .auth import LoginRequired
    from .results import ResultsWriteError, SectionLocked

    with section_log(section) as log_path:
        try:
            return run()
        except (ValueError, OSError, SectionLocked, ResultsWriteError, LoginRequired) as exc:
            logging.getLogger("mhd.client").debug("run stopped", exc_info=True)
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # an unforeseen failure: one line here, the traceback in the log
            logging.getLogger("mhd.client").debug("unexpected failure", exc_info=True)
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} (traceback in {log_path})") from None


# ------------------------------------------------------------------ score


def _deprecated_array_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--backend numpy|cupy`` of score, renamed ``--device cpu|gpu`` ("backend" also named the executor)."""
    if value is not None:
        click.echo(f"{_prog(ctx)}: --backend is deprecated for score; use --device (cpu for numpy, gpu for cupy)", err=True)
    return value


@main.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per file, as score_tiles returns it (tile: the path; features, density, blur, grid, shape, ms, error, ...).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="Where the detector computes: cpu (NumPy) or gpu (CuPy on a CUDA GPU); auto: the GPU when CuPy sees one.  [default: auto]",
)
@click.option(
    "--backend",
    "old_backend",
    type=click.Choice(["auto", "numpy", "cupy"]),
    hidden=True,
    callback=_deprecated_array_backend,
    help="Deprecated: --device.",
)
@detector_options
def score(files: tuple[Path, ...], as_json: bool, device: str | None, old_backend: str | None, **kwargs: Any) -> None:
    """Score image files in this process (no endpoint, no verdicts).

    A file that cannot be read or scored gets its error; the others are
    still scored. Exit status 1 when any file failed.

    Example:

    \b
        client score examples/section_042/tile_r0_c0.png --json
    """
    from rich.markup import escape

    from mhd.contracts.record import RESULT_KEYS
    from mhd.functions import cuda_available

    from .console import printable
    from .score import score_file

    params = _params(kwargs)
    backend = device or old_backend or "auto"  # --device wins over its deprecated alias
    if backend in ("gpu", "cupy") and not cuda_available():
        raise click.ClickException("--device gpu needs CuPy and a CUDA GPU, and this machine has none (use --device cpu or auto)")
    console = _console()
    failed = 0
    for path in files:
        rec = score_file(path, backend=backend, **params)
        failed += rec.error is not None
        if as_json:
            click.echo(json.dumps(rec.to_json(RESULT_KEYS)))
        elif rec.error:
            console.print(f"[bold magenta]ERROR[/] {escape(printable(rec.error))}")
        else:
            console.print(
                f"{escape(printable(str(path)))}  {rec.features:6d} features  {rec.density / 1000:7.1f}k/MP  blur {_blur(rec)}  "
                f"{rec.shape[0]}x{rec.shape[1]}  {rec.ms:.0f} ms  [dim]{rec.backend}[/]"
            )
    if failed:
        sys.exit(1)


def _blur(rec: Any) -> str:
    """The blur as the verdicts read it: ``1.23 ± 0.05 px``, or ``-`` when not measurable."""
    if rec.blur is None or not math.isfinite(rec.blur):
        return "- px"
    err = f" ± {rec.blur_err:.2f}" if rec.blur_err is not None and math.isfinite(rec.blur_err) else ""
    return f"{rec.blur:.2f}{err} px"


# ----------------------------------------------------------------- submit


def _deprecated_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--backend`` of submit/watch, renamed ``--executor`` (where tasks run; ``client score --device`` is where the detector computes)."""
    if value is not None:
        click.echo(f"{_prog(ctx)}: --backend is deprecated for submit and watch; use --executor", err=True)
    return value


#: The parameters :func:`_run_options` adds to a command.
_RUN_OPTIONS = (
    "directory",
    "executor",
    "old_backend",
    "transport",
    "workers",
    "batch",
    "on_oof",
    "calibration",
    "relative",
    "no_calibration",
    "results",
)


def _run_options(fn: Callable) -> Callable:
    """Options shared by submit and watch (the detector's come after the command's own: ``@detector_options`` last)."""
    opts = [
        click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Section folder."),
        click.option(
            "--executor",
            type=click.Choice(["auto", "local", "globus"]),
            help="Where scoring tasks run: local (process pool here) or globus (Globus Compute)  [config: auto]",
        ),
        click.option(
            "--backend",
            "old_backend",
            type=click.Choice(["auto", "local", "globus"]),
            hidden=True,
            callback=_deprecated_backend,
            help="Deprecated: --executor.",
        ),
        click.option(
            "--transport", type=click.Choice(["auto", "inline", "shared", "globus"]), help="How tiles reach the function  [config: auto]"
        ),
        click.option("--workers", type=click.IntRange(1, 64), help="Local executor worker processes."),
        click.option("--batch", type=click.IntRange(1, WORKER_LIMITS["MHD_MAX_TILES"]), help="Tiles per scoring task."),
        click.option(
            "--on-oof",
            metavar="CMD",
            help="Run CMD TILE_PATH for each out-of-focus tile (no shell; MHD_TILE, MHD_VERDICT and MHD_REASON set).",
        ),
        *_rule_options(
            "Judge this section by calibration NAME (stored by 'client calibrate --name') or FILE; recorded for the section, "
            "so later submit, watch and report use it too  [default: the rule recorded for the section, else config "
            "'calibration', else relative]",
            "Judge this section by the relative rule (recorded for the section like --calibration).",
        ),
        click.option(
            "--results",
            "results",
            type=click.Path(file_okay=False, path_type=Path),
            help=(
                "Keep mhd-results.jsonl, the log, the lock and the report in RESULTS/<section name>/ instead of "
                "the section (read-only sections, archives)  [config: results]"
            ),
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _deprecated_no_calibration(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--no-calibration``, renamed ``--relative`` (a calibration is applied only to sections chosen for it)."""
    if value:
        click.echo(f"{_prog(ctx)}: --no-calibration is deprecated; use --relative", err=True)
    return value


def _rule_options(calibration_help: str, relative_help: str) -> list[Callable]:
    """``--calibration NAME|FILE``, ``--relative`` and the hidden ``--no-calibration`` (submit, watch and report)."""
    return [
        click.option("--calibration", metavar="NAME|FILE", help=calibration_help),
        click.option("--relative", is_flag=True, help=relative_help),
        click.option("--no-calibration", is_flag=True, hidden=True, callback=_deprecated_no_calibration, help="Deprecated: --relative."),
    ]


def _options(opts: list[Callable]) -> Callable[[Callable], Callable]:
    """A decorator adding ``opts`` to a command, in the order given."""

    def add(fn: Callable) -> Callable:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return add


def _rule(
    cfg: config_mod.Config,
    folder: Path,
    given: dict[str, Any],
    say: Callable[[str], None],
    params: dict | None = None,
    report: bool = False,
):
    """The verdict rule of the section whose results folder is ``folder`` (:func:`mhd.client.choice.choose`), from
    ``given`` (the options calibration, relative and no_calibration); ``say`` shows each note and warning.

    With ``report`` False (submit, watch) a calibration must hold for ``params``, the run's explicit detector
    parameters. Raises ``click.UsageError`` for --calibration with --relative, ``click.ClickException`` for a bad
    name, a missing calibration, or one fitted with other detector parameters (its law does not hold for these tiles).
    """
    from .choice import choose
    from .console import printable

    relative = given["relative"] or given["no_calibration"]
    if relative and given["calibration"]:
        raise click.UsageError("--calibration and --relative exclude each other: give one")
    try:
        rule, notes = choose(cfg, folder, given["calibration"], relative, report)
        cal = rule.calibration
        if cal is not None and not report:
            warning = cal.check(params, printable(str(rule.calibration_path)))
            if warning:
                notes.append(warning)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for note in notes:
        say(printable(note))
    return rule


def _say_on(console: Console) -> Callable[[str], None]:
    """Show a note on ``console`` (yellow on a terminal)."""
    from rich.markup import escape

    return lambda text: console.print(f"[yellow]{escape(text)}[/]", highlight=False)


def _scoring_params(rule: Any, params: dict | None) -> dict | None:
    """What a run sends its workers: with a calibration, every parameter it was fitted with, so that a worker
    whose defaults differ (an endpoint on another version) scores as the law expects; else the options given."""
    if rule.calibration is None:
        return params
    from .calibration import fitted_params

    return fitted_params(params)


def _transfer_client(collection_ids: list[str]) -> Any:
    """An authenticated ``globus_sdk.TransferClient`` for these collections (may start a login)."""
    from .auth import ensure_login, transfer_client

    ensure_login()
    return transfer_client(collection_ids=collection_ids)


def _results_folder(section: Path, cfg: config_mod.Config) -> Path:
    """The section's results folder (``--results``), checked writable; else a user error naming the option."""
    from .results import check_writable, results_folder

    try:
        folder = results_folder(section, cfg["results"])
        check_writable(folder, section)
    except OSError as exc:
        raise click.ClickException(_os_error(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return folder


def _os_error(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


def _interruptible(console: Console, run: Callable[[], Any]) -> Any:
    """``run()``; Ctrl-C (SIGTERM, SIGHUP) before scoring started ends the command quietly with status 130 (143, 129)."""
    import signal as signals

    from .interrupt import exit_code, stopped_by

    try:
        return run()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signals.SIGINT)
        with contextlib.suppress(OSError):  # a terminal that hung up
            console.print(f"{stopped_by(signum)} before scoring started: nothing recorded", highlight=False)
        sys.exit(exit_code(signum))


def _compute_client() -> Any:
    """An authenticated ``globus_compute_sdk.Client``: logged in first (at a terminal), or
    :class:`~mhd.client.auth.LoginRequired` before any task is sent."""
    from .auth import compute_client, ensure_login

    ensure_login()
    return compute_client()


def _run(run: Callable[..., Any], options: dict[str, Any], check: Callable[[Path, Any], None] | None = None, **extra: Any) -> None:
    """Run ``submit`` or ``watch`` (``run(section, cfg, console, RunOptions)``) with a command's options
    (:func:`_run_options` and the detector's); exit with the section's status.

    ``extra`` are the command's own :class:`~mhd.client.options.RunOptions`; ``check(section, outcome)``
    may refuse the outcome (a ``click.ClickException``) before the summary.
    """
    from .interrupt import Interrupt
    from .options import RunOptions
    from .submit import section_summary

    given = {name: options.pop(name) for name in _RUN_OPTIONS}
    params = _params(options) or None
    section = _section(given["directory"])
    executor = given["executor"] or given["old_backend"]
    cfg = _load_config(
        executor=executor, transport=given["transport"], workers=given["workers"], batch=given["batch"], results=given["results"]
    )
    console = _console()
    folder = _results_folder(section, cfg)
    rule = _rule(cfg, folder, given, _say_on(console), params)
    with Interrupt() as interrupt:
        run_options = RunOptions(
            rule=rule,
            record_rule=True,
            params=_scoring_params(rule, params),
            on_oof=given["on_oof"],
            results_dir=folder,
            transfer_client=_transfer_client,
            compute_client=_compute_client,
            interrupt=interrupt,
            **extra,
        )
        outcome = _interruptible(console, lambda: _run_logged(folder, lambda: run(section, cfg, console, run_options)))
        if check is not None:
            check(section, outcome)
        section_summary(console, section, outcome)
    sys.exit(outcome.exit_status)


@main.command(context_settings=CONTEXT)
@_run_options
@click.option("--rescore", is_flag=True, help="Score every tile again (the old results are kept as a .bak file).")
@click.option("-a", "--all", "show_ok", is_flag=True, help="Print a line for ok tiles too.")
@detector_options
def submit(rescore: bool, show_ok: bool, **options: Any) -> None:
    """Score every tile of a section and report out-of-focus tiles.

    Tiles (TIFF, PNG, BMP, JPEG; recursive) are taken in natural order of
    their paths. Each verdict is appended to DIR/mhd-results.jsonl (or
    under --results) as it arrives, and a line is printed for each tile
    that is not ok (-a: every tile); a re-run scores only tiles not yet
    recorded, retries errors, and scores again tiles whose file changed
    since it was scored (re-imaged under the same name: the new verdict
    replaces the old). Ctrl-C records the tasks that finish within
    drain_timeout seconds and exits 130 (SIGTERM: 143, SIGHUP: 129). Exit status: 0 all ok,
    2 out-of-focus tiles, 1 errors. The header names the rule: relative, or
    the calibration chosen with --calibration (kept for the section).

    Example:

    \b
        client submit --dir examples/section_042     # exits 2: the example has OOF tiles
    """
    from .submit import run_section

    _run(run_section, options, rescore=rescore, show_ok=show_ok)


# -------------------------------------------------------------- config etc


@main.command("config", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {key: {value, source}}.")
@click.option("-v", "--verbose", is_flag=True, help="Also say what each key means.")
def config_cmd(as_json: bool, verbose: bool) -> None:
    """Show the effective configuration and where each value comes from.

    One line per key: key, value (- when unset), source. Values come from
    defaults, the file ($MHD_CONFIG or ~/.config/mhd/config.json),
    MHD_<KEY> environment variables, then command-line options, each
    overriding the one before. --verbose adds each key's meaning. Then the
    calibrations stored by name (client calibrate --name); the key
    calibration, when set, names the one a section gets when none was
    chosen for it (unset: the relative rule).

    Example:

    \b
        MHD_OOF_K=4 client config
    """
    cfg = _load_config()
    if as_json:
        click.echo(json.dumps({k: {"value": cfg.values[k], "source": cfg.sources[k]} for k in cfg.values}, indent=2))
        return
    path = config_mod.config_path()
    click.echo(f"configuration file: {path}{'' if path.exists() else ' (absent: defaults)'}")
    width = max(len(k) for k in config_mod.KEYS)
    values = {k: "-" if cfg.values[k] is None else ('""' if cfg.values[k] == "" else str(cfg.values[k])) for k in config_mod.KEYS}
    value_width = min(40, max(len(v) for v in values.values()))
    for key, spec in config_mod.KEYS.items():
        click.echo(f"{key:<{width}}  {values[key]:<{value_width}}  {cfg.sources[key]}")
        if verbose:
            click.echo(f"{'':<{width}}    {spec.help}")
    for label, value in _calibration_lines(cfg):
        click.echo(f"{label:<{width}}  {value}")
    if not verbose:
        click.echo("client config --verbose says what each key means")


def _calibration_lines(cfg: config_mod.Config) -> list[tuple[str, str]]:
    """``client config``'s lines on calibrations: those stored by name, and an earlier version's file (not applied)."""
    from .choice import stored_names

    names = stored_names()
    stored = f"{', '.join(names)} (--calibration NAME)" if names else "none (client calibrate --name NAME)"
    lines = [("(calibrations)", f"{config_mod.calibrations_dir()}: {stored}")]
    legacy = config_mod.legacy_calibration_path()
    if legacy.is_file():
        lines.append(("(not applied)", f"{legacy}: an earlier version's; use it with --calibration {legacy}"))
    return lines


@main.command(context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Log in again even if valid tokens are stored.")
def login(force: bool) -> None:
    """Log in to Globus (once per machine); tokens go to globus-sdk's token storage.

    Service credentials in GLOBUS_COMPUTE_CLIENT_ID / GLOBUS_COMPUTE_CLIENT_SECRET
    need no login. Tokens are never printed.

    Example:

    \b
        client login
    """
    from . import auth

    try:
        auth.login(force=force)
    except Exception as exc:  # EOF on a closed stdin, refused consent, no network
        raise click.ClickException(f"login failed: {exc}") from None
    click.echo("logged in; tokens are stored in the client's configuration folder")


@main.command(context_settings=CONTEXT)
def logout() -> None:
    """Revoke and delete the stored Globus tokens.

    Example:

    \b
        client logout
    """
    from . import auth

    try:
        auth.logout()
    except Exception as exc:  # revocation needs the network
        raise click.ClickException(f"logout failed: {exc}") from None
    click.echo("logged out; stored tokens deleted")


@main.command(context_settings=CONTEXT)
@click.option("--endpoint", required=True, type=click.UUID, help="The mhd-gpu endpoint's UUID.")
@click.option("--public", is_flag=True, help="Let anyone run the function (on endpoints that allow it).")
def register(endpoint: Any, public: bool) -> None:
    """Register the scoring function with Globus Compute and store both UUIDs.

    The function (score_tiles) is registered by source; its UUID and the
    endpoint's are written to the configuration file, so that 'client submit'
    then uses the Globus executor. Give the function UUID to the endpoint's
    administrator for its allowed_functions.

    Example:

    \b
        client register --endpoint 4b116d3c-1703-4f8f-9f6f-39921e5864df
    """
    from .registration import register_score_tiles

    try:
        function_id = register_score_tiles(_compute_client(), public=public)
    except Exception as exc:  # globus_sdk errors, login refused: a user-facing failure
        raise click.ClickException(f"registration failed: {exc}") from None
    path = config_mod.save_values(endpoint=str(endpoint), function=str(function_id))
    click.echo(f"function {function_id}")
    click.echo(f"stored endpoint {endpoint} and function {function_id} in {path}")


@main.group(cls=_Group, context_settings=CONTEXT)
def endpoint() -> None:
    """Set up the Globus Compute endpoint (on the GPU host).

    Example:

    \b
        client endpoint configure --gpus 8 --env /opt/mhd/venv
    """


def _configure_with_stored_function() -> click.Command:
    """The endpoint's own ``configure`` command, defaulting --function-id to the registered function."""
    from mhd.endpoint.cli import configure

    def callback(**options: Any) -> Any:
        if not options["function_id"]:
            stored = _load_config()["function"]
            options["function_id"] = (stored,) if stored else ()
        return configure.callback(**options)

    help_text = inspect.cleandoc(configure.help or "").replace("python -m mhd.endpoint configure", "client endpoint configure")
    help_text += "\n\nWithout --function-id, the function stored by 'client register' is allowed."
    return click.Command("configure", params=configure.params, callback=callback, help=help_text, context_settings=CONTEXT)


endpoint.add_command(_configure_with_stored_function())


# ------------------------------------------------------------------ watch


def _serve_address(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    """``--serve [HOST:]PORT`` as ``(host, port)`` (a usage error when malformed)."""
    if value is None:
        return None
    from .live import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(context_settings=CONTEXT)
@_run_options
@click.option("--poll", type=click.FloatRange(0.05, 60), default=0.25, show_default=True, help="Seconds between looks at the folder.")
@click.option(
    "--give-up",
    type=click.FloatRange(0.0),
    default=10.0,
    show_default=True,
    help="Seconds a stable but incomplete file (empty, or its image structure cut short) waits before it is scored (and fails).",
)
@click.option(
    "--idle-exit",
    type=click.FloatRange(0.0),
    help=(
        "Stop after this many seconds without a new or growing tile file, once every tile seen is scored"
        " (an incomplete one after --give-up); default: run until Ctrl-C."
    ),
)
@click.option(
    "--serve",
    metavar="[HOST:]PORT",
    callback=_serve_address,
    help=(
        "Serve the section's live page at http://HOST:PORT/ (verdicts as they arrive, flagged tiles with thumbnails);"
        " HOST defaults to 127.0.0.1, this machine only: name 0.0.0.0 to let the lab see it. PORT 0: any free port."
    ),
)
@detector_options
def watch(poll: float, give_up: float, idle_exit: float | None, serve: tuple[str, int] | None, **options: Any) -> None:
    """Score tiles as the microscope writes them, until Ctrl-C.

    A folder that does not exist yet is waited for. A tile is taken once completely written (size stable and its image
    structure whole, read without decoding it, or
    renamed into place from a .part/.tmp/dot name). A recorded tile whose
    file changes (re-imaged under the same name, written over it or renamed
    into place) is taken again the same way; its new verdict replaces the
    old. Each verdict is printed
    and recorded within about a second; with --on-oof, CMD runs with the
    tile's path as its last argument (no shell involved). Ctrl-C records
    the tasks that finish within drain_timeout seconds (the others are
    scored on the next run), then exits with the section's status (0/1/2);
    SIGTERM and SIGHUP do the same and exit 143 and 129. The header names
    the rule: relative, or the calibration chosen with --calibration (kept
    for the section).

    The section's page, DIR/mhd-report/index.html (as client report writes
    it), is kept current while the watch runs; --serve serves it live.

    Example:

    \b
        client watch --dir /data/section_043 --on-oof "notify-send 'Out of focus'"
        client watch --dir /data/section_043 --serve 8000
    """
    from .watch import watch_section

    def nothing_came(section: Path, outcome: Any) -> None:
        if idle_exit is not None and not outcome.records and outcome.signum is None:  # unattended, and nothing came: not "all ok"
            raise click.ClickException(
                f"{section}: no tiles arrived within --idle-exit {idle_exit:g} s ({', '.join(sorted(IMAGE_SUFFIXES))} files,"
                " in subfolders too)"
            )

    _params(dict(options))  # a usage error now, not once the folder has appeared
    with _live_server(serve, options["directory"]) as server:  # bound (or refused) now: it serves while the folder is awaited
        _wait_for_folder(options["directory"], poll, idle_exit)
        _run(watch_section, options, check=nothing_came, poll=poll, give_up=give_up, idle_exit=idle_exit, serve=server)


@contextlib.contextmanager
def _live_server(address: tuple[str, int] | None, directory: Path) -> Any:
    """``watch --serve``'s server, bound and announced, closed when the watch ends; None without ``--serve``."""
    if address is None:
        yield None
        return
    from .live import LiveServer, waiting_state
    from .rule import Rule

    waiting = waiting_state(directory.name, Rule(), {"section": str(directory)}, {"pending": 0, "rate": 0.0, "elapsed": 0.0})
    try:
        server = LiveServer(address, {**waiting, "rule": "chosen when the section's folder appears"}).start()
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from None
    where = "this machine only" if server.local else "from other machines too"
    click.echo(f"live section page: {server.url} ({where})")
    try:
        yield server
    finally:
        server.close()


def _wait_for_folder(directory: Path, poll: float, idle_exit: float | None) -> None:
    """Wait until ``directory`` exists: the microscope often creates a section's folder after ``watch`` starts.

    Ctrl-C (or SIGTERM, SIGHUP) while waiting exits quietly; with ``idle_exit`` the wait
    gives up after that many seconds.
    """
    if directory.exists():
        return
    import time

    click.echo(f"waiting for {directory} to appear (Ctrl-C to stop)", err=True)
    start = time.monotonic()
    while not directory.exists():
        if idle_exit is not None and time.monotonic() - start > idle_exit:
            raise click.ClickException(f"{directory} did not appear within --idle-exit {idle_exit:g} s")
        time.sleep(poll)


# ----------------------------------------------------------------- report


@main.command(context_settings=CONTEXT)
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Section folder (with mhd-results.jsonl).")
@click.option(
    "--positions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV tile,row,col (default: r<row>_c<col> in tile names).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder  [default: DIR/mhd-report]")
@click.option(
    "--results",
    "results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results kept outside the section by submit/watch --results (read from RESULTS/<section name>/)  [config: results]",
)
@_options(
    _rule_options(
        "Judge by calibration NAME (stored by 'client calibrate --name') or FILE, for this report only  [default: the rule "
        "submit/watch recorded for the section, else config 'calibration', else relative]",
        "Judge against the section (the relative rule), for this report only.",
    )
)
def report(directory: Path, positions: Path | None, out: Path | None, results: Path | None, **given: Any) -> None:
    """The section's page, figures, a CSV and the list of tiles to re-acquire, from its results.

    Writes DIR/mhd-report/ (each file replaced whole): index.html (one
    self-contained page: the rule in force, the settings, each flagged tile's
    thumbnail beside an in-focus neighbour, the figures and a sortable table
    of every tile; open it in a browser, no network needed), focus.png (each
    tile on the measure the verdicts used, with its limit), montage.png (the
    same where each tile sits, when positions are known), focus-maps.png
    (the cells of each flagged tile), density.png (the feature count),
    mhd-results.csv and mhd-reacquire.txt. Tiles are also re-judged against the whole
    section (section_verdict); the re-acquire list has every tile flagged
    either way, and errors, each with what to fix after a tab: defocus
    (refocus), astigmatism N deg (turn the stigmators; N is the direction of
    strongest blur; ", refocus too" where the tile is also defocused), partial (some regions out of focus), or error. The
    last lines name the rule the tiles were judged by: the one submit or
    watch recorded for the section (a calibration chosen with --calibration,
    or relative), unless --calibration or --relative is given.

    Example:

    \b
        client report --dir examples/section_042
    """
    from .console import printable
    from .report import make_report
    from .results import results_folder
    from .rule import rule_summary

    section = _section(directory)
    cfg = _load_config(results=results)
    try:
        folder = results_folder(section, cfg["results"], create=False)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    rule = _rule(cfg, folder, given, click.echo, report=True)
    try:
        rep = make_report(section, rule, positions, out, folder)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        hint = "" if out or cfg["results"] else " (a read-only section: give --out DIR)"
        raise click.ClickException(_os_error(exc) + hint) from None
    again = len(rep.reacquire.read_bytes().splitlines())
    for path in (rep.page, rep.focus, rep.montage, rep.focus_maps, rep.density, rep.csv, rep.reacquire):
        if path is not None:
            click.echo(f"wrote {path}")
    if rep.montage is None:
        click.echo("no montage.png: the tile names carry no r<row>_c<col> (--positions CSV gives them)")
    click.echo(f"rule: {printable(rule_summary(rule))}")
    click.echo(f"{again} tile(s) to re-acquire; open {rep.page} in a browser")


# -------------------------------------------------------------- calibrate


@main.command(context_settings=CONTEXT)
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Folder of a through-focus series.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,defocus (default: defocus from file names).",
)
@click.option(
    "--pattern", help="Regular expression on file names; group 1 is the defocus  [default: df<number>, z<number>, defocus<number>]"
)
@click.option("--units", default="um", show_default=True, help="Defocus units.")
@click.option(
    "--max-defocus",
    type=click.FloatRange(0.0, min_open=True),
    help="Largest acceptable |defocus|  [default: the series' smallest non-zero |defocus|]",
)
@click.option(
    "--name",
    metavar="NAME",
    help="Store the calibration by this name (the microscope and imaging setting, e.g. zeiss-5kx; letters, digits, '.', '_', '-') "
    "in the config folder's calibrations/NAME.json; sections use it when given --calibration NAME.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Store the calibration in this file instead (sections use it when given --calibration FILE).",
)
@click.option("--dry-run", is_flag=True, help="Fit and plot only; store nothing (no --name or --out needed).")
@click.option(
    "--measure",
    type=click.Choice(["blur", "count"]),
    default="blur",
    show_default=True,
    help="blur: blur^2 = a + b defocus^2 (holds across doses); count: log(density) = a + b |defocus| (the paper's law, one dose).",
)
@detector_options
def calibrate(
    directory: Path,
    csv_path: Path | None,
    pattern: str | None,
    units: str,
    max_defocus: float | None,
    name: str | None,
    out: Path | None,
    dry_run: bool,
    measure: str,
    **kwargs: Any,
) -> None:
    """Fit a focus measure against defocus on a through-focus series and store it by name.

    The blur (default): blur^2 = a + b defocus^2, in pixels. The count
    (--measure count): log(feature density) against |defocus|, the paper's
    figure 2. Reports r, plots it to DIR/mhd-calibration.png and stores the
    calibration under --name (or in --out FILE; one of them is required
    unless --dry-run). A calibration holds for one microscope and imaging
    setting, so it judges only the sections given --calibration NAME (or
    FILE) on submit, watch or report, and later commands on those sections:
    a tile is then out of focus when its estimated |defocus| exceeds
    --max-defocus. Other sections keep the relative rule. Exit status 1
    when an image could not be scored (the others are fitted and stored).

    Example:

    \b
        client calibrate --dir examples/focus_series --max-defocus 1 --name example-tem
    """
    from . import calibrate as cal_mod
    from .calibration import fit, fit_blur, threshold_density

    params = _params(kwargs)
    store = _calibration_store(name, out, dry_run)
    folder = _section(directory)
    try:
        table = cal_mod.defocus_table(folder, csv_path, pattern or cal_mod.DEFAULT_PATTERN)
        files, dz, values, failed = cal_mod.score_series(folder, table, params, measure)
        fitter = fit_blur if measure == "blur" else fit
        result = fitter(files, dz, values, units=units, max_defocus=max_defocus, params=params, source=str(folder))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    c = replace(result.calibration, name=name or "", fitted=datetime.now().astimezone().isoformat(timespec="seconds"))
    plot = cal_mod.plot_fit(result, folder / CALIBRATION_PLOT)
    if measure == "blur":
        click.echo(f"{c.n} images: blur^2 = {c.intercept:.3f} {c.slope:+.4f} * defocus^2 (px^2)   r = {c.r:.4f}")
        click.echo(f"out of focus beyond {c.max_defocus:g} {units}: above {c.blur_threshold:.2f} px of blur")
    else:
        click.echo(f"{c.n} images: log(density) = {c.intercept:.3f} {c.slope:+.4f} * |defocus|   r = {c.r:.4f}")
        click.echo(f"out of focus beyond {c.max_defocus:g} {units}: below {threshold_density(c):.0f} features/MP")
    click.echo(f"plot: {plot}")
    if store is not None:
        _store_calibration(c, store)
    if failed:
        click.echo(f"{len(failed)} image(s) could not be scored (above) and were left out of the fit", err=True)
        sys.exit(1)


def _calibration_store(name: str | None, out: Path | None, dry_run: bool) -> Path | None:
    """Where ``client calibrate`` stores the calibration (None: ``--dry-run``), checked before the series is scored."""
    from .choice import named_path

    if name is not None and out is not None:
        raise click.UsageError("--name and --out exclude each other: --name stores in the config folder, --out in FILE")
    if dry_run:
        return None
    if out is not None:
        return out
    if name is None:
        raise click.UsageError(
            "give --name NAME (the microscope and imaging setting it holds for, e.g. zeiss-5kx) or --out FILE to store the "
            "calibration, or --dry-run to only fit it"
        )
    try:
        return named_path(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _store_calibration(cal: Any, path: Path) -> None:
    """Write ``cal`` to ``path`` and say where it is and how a section uses it."""
    from .console import printable

    replaced = path.exists()
    try:
        path = cal.save(path).resolve()
    except OSError as exc:
        raise click.ClickException(_os_error(exc)) from None
    use = f"--calibration {cal.name}" if cal.name else f"--calibration {printable(str(path))}"
    what = f"calibration '{cal.name}'" if cal.name else "calibration"
    click.echo(f"stored {what} in {printable(str(path))}{' (replacing the one stored there)' if replaced else ''}")
    click.echo(f"used only for the sections given {use} (submit, watch, report) and by later commands on them;", nl=False)
    click.echo(" other sections keep the relative rule")


# ------------------------------------------------------------ focus-sweep


@main.command("focus-sweep", context_settings=CONTEXT)
@click.option(
    "--dir", "directory", required=True, type=click.Path(path_type=Path), help="Folder of images of one field at several working distances."
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,wd (default: WD from file names).",
)
@click.option(
    "--pattern",
    help=(
        "Regular expression on file names; group 1 is the WD, optional group 2 its unit  [default: "
        "wd<number><unit>, e.g. wd_5.002mm, wd-3.0um]"
    ),
)
@click.option(
    "--units", type=click.Choice(["nm", "um", "mm"]), help="Unit of working distances written without one  [default: from the names]"
)
@click.option(
    "--points",
    type=click.IntRange(3, 99),
    default=5,
    show_default=True,
    help="Distinct working distances in the fit around the highest count.",
)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Plot file  [default: DIR/mhd-focus-sweep.png]")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON object (best_wd, uncertainty, units, status, r, images, ...)."
)
@detector_options
def focus_sweep(
    directory: Path,
    csv_path: Path | None,
    pattern: str | None,
    units: str | None,
    points: int,
    plot_path: Path | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Find the best working distance (WD) from images of one field at several WDs.

    Scores each image in this process, fits log(feature count) around the
    highest count (a Gaussian in WD) and prints the best WD with its
    standard error, in the sweep's unit (nm, um or mm: from the names, the
    CSV or --units, never assumed). Writes a plot of count against WD with
    the fit. A '-' right after 'wd' in a name is a minus sign.

    Exit status: 0 peak found inside the sweep; 2 no peak inside it (the
    highest count is at an end: extend or move the sweep; the WD printed is
    the best one sampled); 1 some image failed (the rest are fitted) or a
    user error.

    Example:

    \b
        client focus-sweep --dir examples/wd_sweep
    """
    from . import sweep as sweep_mod

    params = _params(kwargs)
    folder = _section(directory)
    try:
        table, unit = sweep_mod.wd_table(folder, csv_path, pattern or sweep_mod.DEFAULT_PATTERN, units)
        result = sweep_mod.fit_sweep(folder, sweep_mod.score_sweep(folder, table, params), unit, points)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    plot = sweep_mod.plot_sweep(result, plot_path or folder / SWEEP_PLOT)
    if as_json:
        click.echo(json.dumps({**result.to_json(), "plot": str(plot)}))
    else:
        for line in sweep_mod.summary_lines(result):
            click.echo(line)
        click.echo(f"plot: {plot}")
    failed = len(result.images) - len(result.scored)
    sys.exit(1 if failed else 0 if result.focus.ok else 2)
