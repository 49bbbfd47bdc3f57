"""Render and install the ``mhd-gpu`` Globus Compute endpoint configuration.

An administrator on the GPU host (the project installed in ``--env``) runs::

    python -m mhd.endpoint configure --gpus 8 --env /opt/mhd/venv \\
        --data-root /data/mhd --function-id <UUID>
    globus-compute-endpoint start mhd-gpu

which writes ``~/.globus_compute/mhd-gpu/config.yaml`` (a single-user endpoint
with a ``GlobusComputeEngine``, one worker per GPU). ``--multi-user`` writes a
template-capable endpoint instead: ``config.yaml`` (the manager, with
``allowed_functions``), ``user_config_template.yaml.j2`` (the per-user engine,
installing nothing from the internet) and ``user_config_schema.json`` (which
accepts no user options). ``--provider slurm|pbspro`` requests GPU nodes from a
batch scheduler instead of using the local GPUs.

Every file is validated with the endpoint's own loader (``get_config`` /
``load_config_yaml``) and, for the template, its own renderer
(``render_config_user_template`` + the schema), in a scratch folder, before
anything is written.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import tempfile
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["EndpointSpec", "render_endpoint", "install_endpoint", "validate_dir", "endpoint_dir", "PROVIDERS", "LIMIT_VARS"]

PROVIDERS = ("local", "slurm", "pbspro")
#: Worker limits that may be set (see :mod:`mhd.functions.settings`).
LIMIT_VARS = ("MHD_MAX_PIXELS", "MHD_MAX_INLINE_BYTES", "MHD_MAX_TILES")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f{}%#]")


@dataclass(frozen=True)
class EndpointSpec:
    """Everything the endpoint templates need.

    Attributes
    ----------
    gpus : int
        GPUs per node, one worker each (1..64; a DGX A100 has 8).
    env : str
        Absolute path of the virtual environment where ``mhd-focus`` (with the
        ``gpu`` extra) is installed; workers ``source <env>/bin/activate``.
    name : str
        Endpoint name (folder under ``~/.globus_compute``).
    function_ids : tuple of str
        Registered ``score_tiles`` UUIDs for ``allowed_functions``; empty
        allows any function (a warning is written into the config).
    data_root : str or None
        The workers' ``MHD_DATA_ROOT``; None allows inline tiles only.
    limits : dict
        Optional ``MHD_MAX_PIXELS``, ``MHD_MAX_INLINE_BYTES``, ``MHD_MAX_TILES``.
    provider : {"local", "slurm", "pbspro"}
        Local GPUs, or GPU nodes from Slurm / PBS Pro.
    multi_user : bool
        Template-capable endpoint (manager + per-user template) instead of a single config.
    retries : int
        ``max_retries_on_system_failure``.
    idle_minutes : int
        Idle minutes before workers (and their GPU contexts) are released.
    partition, account : str or None
        Scheduler partition (Slurm) / queue (PBS Pro) and account.
    walltime : str
        Scheduler wall time of one block, ``HH:MM:SS``.
    max_blocks : int
        Most nodes requested at once from the scheduler.
    gpu_type : str or None
        Slurm GRES type, e.g. ``"a100"`` -> ``--gres=gpu:a100:<gpus>``.
    cpus_per_node : int
        PBS Pro ``ncpus`` per node.
    identity_mapping : str or None
        Multi-user endpoints run as root: path of the identity mapping JSON.
    """

    gpus: int
    env: str
    name: str = "mhd-gpu"
    function_ids: tuple[str, ...] = ()
    data_root: str | None = None
    limits: dict[str, int] = field(default_factory=dict)
    provider: str = "local"
    multi_user: bool = False
    retries: int = 2
    idle_minutes: int = 30
    partition: str | None = None
    account: str | None = None
    walltime: str = "04:00:00"
    max_blocks: int = 1
    gpu_type: str | None = None
    cpus_per_node: int = 32
    identity_mapping: str | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_text()
        object.__setattr__(self, "function_ids", tuple(str(uuid.UUID(str(f))) for f in self.function_ids))

    def _check_numbers(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or not 1 <= self.gpus <= 64:
            raise ValueError(f"gpus must be an integer from 1 to 64, got {self.gpus!r}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        for label, value, lo in (("retries", self.retries, 0), ("idle_minutes", self.idle_minutes, 1), ("max_blocks", self.max_blocks, 1), ("cpus_per_node", self.cpus_per_node, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{label} must be an integer >= {lo}, got {value!r}")
        for key, value in self.limits.items():
            if key not in LIMIT_VARS:
                raise ValueError(f"unknown limit {key!r}; use {', '.join(LIMIT_VARS)}")
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")

    def _check_text(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"endpoint name {self.name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        for label in ("env", "data_root", "identity_mapping"):
            value = getattr(self, label)
            if value is not None and (not os.path.isabs(value) or _UNSAFE.search(value)):
                raise ValueError(f"{label} must be an absolute path without control characters or {{}}%#, got {value!r}")
        for label in ("partition", "account", "gpu_type"):
            value = getattr(self, label)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]+", value):
                raise ValueError(f"{label} {value!r}: use letters, digits, '.', '_', '@' or '-'")
        if not re.fullmatch(r"\d{1,3}:[0-5]\d:[0-5]\d", self.walltime):
            raise ValueError(f"walltime must be HH:MM:SS, got {self.walltime!r}")

    @property
    def display_name(self) -> str:
        return f"{self.name}: MHD focus scoring ({self.gpus} GPU{'s' if self.gpus > 1 else ''})"

    @property
    def gres(self) -> str:
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"

    def worker_init_lines(self) -> list[str]:
        """Shell lines run before each worker starts (quoted for the shell)."""
        lines = [f"source {shlex.quote(os.path.join(self.env, 'bin', 'activate'))}"]
        if self.data_root:
            lines.append(f"export MHD_DATA_ROOT={shlex.quote(self.data_root)}")
        lines += [f"export {key}={int(value)}" for key, value in sorted(self.limits.items())]
        return lines


def _environment():
    import jinja2

    loader = jinja2.FunctionLoader(lambda name: (resources.files("mhd.endpoint") / "templates" / name).read_text())
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["yaml"] = json.dumps  # a JSON string is a valid quoted YAML scalar
    return env


def render_endpoint(spec: EndpointSpec) -> dict[str, str]:
    """Render the endpoint's files.

    Returns
    -------
    dict of str to str
        File name (in the endpoint folder) to content: ``config.yaml``, plus
        ``user_config_template.yaml.j2`` and ``user_config_schema.json`` for a
        multi-user endpoint.
    """
    env = _environment()

    def render(template: str) -> str:
        return env.get_template(template).render(spec=spec).strip() + "\n"

    if not spec.multi_user:
        return {"config.yaml": render("config.yaml.j2")}
    return {
        "config.yaml": render("manager_config.yaml.j2"),
        "user_config_template.yaml.j2": render("user_config_template.yaml.j2"),
        "user_config_schema.json": (resources.files("mhd.endpoint") / "templates" / "user_config_schema.json").read_text(),
    }


def validate_dir(directory: str | os.PathLike) -> list:
    """Load an endpoint folder the way the endpoint does.

    ``config.yaml`` through ``get_config``; a ``user_config_template.yaml.j2``
    through ``load_user_config_template`` and ``render_config_user_template``
    with the folder's ``user_config_schema.json`` and no user options (as
    for a user who passes none), then ``load_config_yaml``.

    Returns
    -------
    list
        The loaded configs (``UserEndpointConfig`` / ``CoreEndpointConfig``),
        their engines shut down.

    Raises
    ------
    ValueError
        Naming the file that the endpoint could not load.
    """
    from globus_compute_endpoint.endpoint.config import utils
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    directory = Path(directory)
    loaded = [_checked("config.yaml", lambda: utils.get_config(directory))]
    template = directory / "user_config_template.yaml.j2"
    if template.exists():
        identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], uuid.UUID(int=0))
        text = _checked(
            template.name,
            lambda: utils.render_config_user_template(
                parent_config=loaded[0],
                user_config_template=utils.load_user_config_template(template),
                user_config_template_path=template,
                mapped_identity=identity,
                user_config_schema=utils.load_user_config_schema(directory / "user_config_schema.json"),
                user_opts={},
            ),
        )
        loaded.append(_checked(f"{template.name} (rendered)", lambda: utils.load_config_yaml(text)))
    return loaded


def _checked(label: str, load):
    try:
        config = load()
    except Exception as exc:
        raise ValueError(f"{label} does not load with the endpoint's own loader: {exc}") from exc
    engine = getattr(config, "engine", None)
    if engine is not None:
        engine.shutdown()
    return config


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o600)


def endpoint_dir(name: str, home: str | os.PathLike | None = None) -> Path:
    """``<home>/.globus_compute/<name>`` (home: ``$HOME``)."""
    return Path(home or Path.home()) / ".globus_compute" / name


def install_endpoint(spec: EndpointSpec, *, home: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Render, validate and write the endpoint folder.

    Parameters
    ----------
    spec : EndpointSpec
    home : path, optional
        Folder holding ``.globus_compute`` (default: the user's home).
    force : bool
        Overwrite existing files; without it an existing configuration is refused.

    Returns
    -------
    Path
        The endpoint folder (mode 0700; files 0600).

    Raises
    ------
    FileExistsError
        When a file would be overwritten and ``force`` is false.
    ValueError
        When the endpoint's loader rejects a rendered file.
    """
    directory = endpoint_dir(spec.name, home)
    files = render_endpoint(spec)
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        raise FileExistsError(f"{directory} already has {', '.join(existing)}; use force (--force) to overwrite")
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-check-") as scratch:
        _write(Path(scratch) / spec.name, files)
        validate_dir(Path(scratch) / spec.name)
    _write(directory, files)
    return directory
