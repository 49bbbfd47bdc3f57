"""``python -m mhd.endpoint configure``: install the mhd-gpu endpoint configuration.

The :func:`configure` click command is reusable: ``client endpoint configure``
adds it to the client's command group.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .configure import LIMIT_VARS, MAX_GPUS, PROVIDERS, EndpointSpec, ignored_options, install_endpoint, render_endpoint, start_command

__all__ = ["configure", "main"]


_ROOT_HINT = (
    "\nThis command runs as root, so it writes the layout for an endpoint run as root (--multi-user)."
    "\nEither give --email ADDRESS --identity-mapping FILE (see docs/admin.md, 'Run as root'),"
    "\nor (recommended) run it as the non-root account that will run the endpoint, e.g."
    "\n  sudo -u mhd -H /opt/mhd/venv/bin/python -m mhd.endpoint configure ..."
    "\n(--single-user forces the service-account layout)."
)


def _spec(options: dict, *, chosen: bool) -> EndpointSpec:
    limits = {var: options.pop(var.lower().removeprefix("mhd_")) for var in LIMIT_VARS}
    options["limits"] = {k: v for k, v in limits.items() if v is not None}
    options["function_ids"] = tuple(options.pop("function_id"))
    if options["identity_mapping"] is not None:
        options["identity_mapping"] = str(Path(options["identity_mapping"]).resolve())
    try:
        return EndpointSpec(**options)
    except ValueError as exc:
        hint = _ROOT_HINT if options["multi_user"] and not chosen else ""
        raise click.ClickException(f"{exc}{hint}") from exc


@click.command("configure")
@click.option("--gpus", type=click.IntRange(1, MAX_GPUS), required=True, help="GPUs per node; one worker each.")
@click.option("--env", "env", required=True, help="Absolute path of the venv where mhd-focus[gpu] is installed.")
@click.option("--name", default="mhd-gpu", show_default=True, help="Endpoint name (~/.globus_compute/NAME).")
@click.option("--function-id", multiple=True, metavar="UUID", help="Registered score_tiles UUID for allowed_functions (repeatable).")
@click.option("--data-root", default=None, help="Workers' MHD_DATA_ROOT: folder that tile paths are relative to.")
@click.option(
    "--provider", type=click.Choice(PROVIDERS), default="local", show_default=True, help="Local GPUs, or GPU nodes from Slurm / PBS Pro."
)
@click.option(
    "--multi-user/--single-user",
    default=None,
    help=(
        "Layout for an endpoint run as root (identity mapping, --email) / as a non-root service account. [default: "
        "--multi-user when run as root, like globus-compute-endpoint configure]"
    ),
)
@click.option("--email", default=None, help="Contact e-mail address shown to users (required with --multi-user).")
@click.option(
    "--identity-mapping",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With --multi-user: identity mapping JSON (Globus identities -> local accounts).",
)
@click.option("--partition", default=None, help="Slurm partition / PBS Pro queue.")
@click.option("--account", default=None, help="Scheduler account.")
@click.option("--walltime", default="04:00:00", show_default=True, help="Scheduler wall time of one node (HH:MM:SS).")
@click.option("--max-blocks", type=click.IntRange(1), default=1, show_default=True, help="Most nodes requested at once.")
@click.option("--gpu-type", default=None, help="Slurm GRES type, e.g. a100 (--gres=gpu:a100:N).")
@click.option("--cpus-per-node", type=click.IntRange(1), default=32, show_default=True, help="PBS Pro ncpus per node.")
@click.option("--idle-minutes", type=click.IntRange(1), default=30, show_default=True, help="Idle time before workers release their GPUs.")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True, help="max_retries_on_system_failure.")
@click.option("--max-pixels", type=click.IntRange(1), default=None, help="Workers' MHD_MAX_PIXELS.")
@click.option("--max-inline-bytes", type=click.IntRange(1), default=None, help="Workers' MHD_MAX_INLINE_BYTES.")
@click.option("--max-tiles", type=click.IntRange(1), default=None, help="Workers' MHD_MAX_TILES.")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding .globus_compute (default: your home); the printed start command says how the endpoint finds it.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing configuration.")
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
def configure(home: str | None, force: bool, dry_run: bool, **options) -> None:
    """Write the Globus Compute endpoint configuration for MHD scoring.

    The layout globus-compute-endpoint 4.x starts: config.yaml (no engine;
    allowed_functions), user_config_template.yaml.j2 (one GlobusComputeEngine
    worker per GPU, workers activating ENV, only JSON arguments, nothing
    installed from the internet), user_config_schema.json (no user options)
    and user_environment.yaml. Run it as the non-root account that will run
    the endpoint (recommended); as root, --email and --identity-mapping are
    required. Files are checked with the endpoint's own loader first; an
    existing configuration is kept unless --force.

    Example:

    \b
        python -m mhd.endpoint configure --gpus 8 --env /opt/mhd/venv \\
            --data-root /data/mhd --function-id 4b116d3c-1703-4f8f-9f6f-39921e5864df
        /opt/mhd/venv/bin/globus-compute-endpoint start mhd-gpu
    """
    as_root = os.geteuid() == 0
    chosen = options["multi_user"] is not None
    if not chosen:
        options["multi_user"] = as_root
    spec = _spec(options, chosen=chosen)
    for option in ignored_options(spec):
        click.echo(f"Warning: {option} has no effect with --provider {spec.provider}.", err=True)
    if dry_run:
        for name, text in render_endpoint(spec).items():
            click.echo(f"# ---- {name}\n{text}")
        return
    try:
        directory = install_endpoint(spec, home=home, force=force)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # often HOME of another account (sudo -u without -H), or a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        raise click.ClickException(
            f"cannot write the configuration: {exc.strerror or exc}{where}. If that is another account's HOME, run this as "
            "the account that will run the endpoint with its own HOME (sudo -u ACCOUNT -H ...), or give --home."
        ) from exc
    click.echo(f"Wrote {directory}")
    if not spec.function_ids:
        click.echo("Warning: no --function-id, so allowed_functions is unset and any function may run.", err=True)
    if as_root and not spec.multi_user:
        click.echo("Note: this layout is for a non-root service account: start the endpoint as that account, not as root.", err=True)
    click.echo(f"Start it with:  {start_command(spec, home)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """MHD endpoint administration."""


main.add_command(configure)
