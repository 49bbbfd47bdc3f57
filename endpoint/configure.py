"""Render and install the ``mhd-gpu`` Globus Compute endpoint configuration.

globus-compute-endpoint 4.x always starts a *template-capable* endpoint: a
manager process whose ``config.yaml`` has no ``engine``, and which starts a
user endpoint process from ``user_config_template.yaml.j2`` when tasks arrive.
``configure`` writes that layout, in one of two forms:

* **service account** (recommended): the endpoint runs as a non-root account
  (``mhd``); tasks run as that account, for the Globus identity that logged in.
* **root** (``--multi-user``): the endpoint runs as root with a contact
  ``email`` and an identity mapping (``identity_mapping_config_path``); each
  task runs as the local account its sender's Globus identity maps to.

An administrator on the GPU host (the project installed in ``--env``) runs::

    python -m mhd.endpoint configure --gpus 8 --env /opt/mhd/venv \\
        --data-root /data/mhd --function-id <UUID>
    /opt/mhd/venv/bin/globus-compute-endpoint start mhd-gpu

which writes ``~/.globus_compute/mhd-gpu/``: ``config.yaml`` (the manager:
``allowed_functions``, and for root ``email`` and the identity mapping),
``user_config_template.yaml.j2`` (the engine: one worker per GPU, the allowed
serializers, ``worker_init``, limits; installs nothing from the internet),
``user_config_schema.json`` (accepts no user options) and
``user_environment.yaml`` (``PATH`` with the environment's ``bin/`` first).
``--provider slurm|pbspro`` requests GPU nodes from a batch scheduler instead
of using the local GPUs.

Every file is validated in a scratch folder before anything is written: the
manager with the endpoint's own loader (``get_config``) and the checks that
``globus-compute-endpoint start`` makes before it logs in, the template with the
endpoint's own renderer (``render_config_user_template`` + the schema) and
loader, the identity mapping with the endpoint's own mapper.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import tempfile
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mhd.contracts.limits import ALLOWED_SERIALIZERS, LIMIT_VARS, check_data_root

__all__ = [
    "EndpointSpec",
    "render_endpoint",
    "install_endpoint",
    "validate_dir",
    "endpoint_dir",
    "start_command",
    "PROVIDERS",
    "LIMIT_VARS",
    "MAX_GPUS",
]

PROVIDERS = ("local", "slurm", "pbspro")
#: Most GPUs per node (one worker each) that a configuration may ask for.
MAX_GPUS = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f{}%#]")
_EMAIL = re.compile(r"^[^@\s{}%#]+@[^@\s{}%#]+\.[^@\s{}%#]+$")
#: What the files of a configured endpoint folder are.
FILES = ("config.yaml", "user_config_template.yaml.j2", "user_config_schema.json", "user_environment.yaml")


@dataclass(frozen=True)
class EndpointSpec:
    """Everything the endpoint templates need.

    Attributes
    ----------
    gpus : int
        GPUs per node, one worker each (1..MAX_GPUS; a DGX A100 has 8).
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
        The root layout: the endpoint runs as root, maps each sender's Globus
        identity to a local account (``identity_mapping``) and runs the
        task as that account; needs ``email`` and ``identity_mapping``.
        False (default): the endpoint runs as a non-root service account and
        tasks run as that account.
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
        Root layout only: absolute path of the identity mapping JSON
        (``identity_mapping_config_path``: Globus identities to local accounts).
    email : str or None
        Contact address shown to users (``email``); required by
        globus-compute-endpoint for an endpoint run as root.
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
    email: str | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_text()
        self._check_layout()
        object.__setattr__(self, "function_ids", tuple(_function_id(f) for f in self.function_ids))

    def _check_numbers(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or not 1 <= self.gpus <= MAX_GPUS:
            raise ValueError(f"gpus must be an integer from 1 to {MAX_GPUS}, got {self.gpus!r}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        for label, value, lo in (
            ("retries", self.retries, 0),
            ("idle_minutes", self.idle_minutes, 1),
            ("max_blocks", self.max_blocks, 1),
            ("cpus_per_node", self.cpus_per_node, 1),
        ):
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
        if self.email is not None and not _EMAIL.match(self.email):
            raise ValueError(f"email {self.email!r} is not an e-mail address")
        if self.data_root is not None:
            try:
                check_data_root(self.data_root)
            except ValueError as exc:
                raise ValueError(f"data_root {exc}: the workers could read any file") from None

    def _check_layout(self) -> None:
        if self.multi_user:
            missing = [
                what
                for what, value in (
                    ("a contact email (--email)", self.email),
                    ("an identity mapping file (--identity-mapping)", self.identity_mapping),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    "an endpoint run as root (--multi-user) needs "
                    + " and ".join(missing)
                    + ": globus-compute-endpoint refuses to start a root endpoint without an email, and without an identity mapping"
                    " tasks would run as root; or run the endpoint as a non-root service account (--single-user, recommended)"
                )
        elif self.identity_mapping:
            raise ValueError("an identity mapping (--identity-mapping) applies only to an endpoint run as root (--multi-user)")

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

    @property
    def path(self) -> str:
        """``PATH`` of the user endpoint process: the environment's ``bin/`` first.

        Workers are started by name (``globus-compute-endpoint``,
        ``process_worker_pool.py``); an endpoint run as root clears its
        environment before it starts a user's endpoint process.
        """
        return os.pathsep.join([os.path.join(self.env, "bin"), "/usr/local/bin", "/usr/bin", "/bin"])


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
        File name (in the endpoint folder) to content, for each of
        :data:`FILES`: ``config.yaml`` (the manager, no ``engine``),
        ``user_config_template.yaml.j2`` (the engine), ``user_config_schema.json``
        and ``user_environment.yaml``.
    """
    env = _environment()

    def render(template: str) -> str:
        return env.get_template(template).render(spec=spec, serializers=ALLOWED_SERIALIZERS).strip() + "\n"

    return {
        "config.yaml": render("manager_config.yaml.j2"),
        "user_config_template.yaml.j2": render("user_config_template.yaml.j2"),
        "user_config_schema.json": (resources.files("mhd.endpoint") / "templates" / "user_config_schema.json").read_text(),
        "user_environment.yaml": render("user_environment.yaml.j2"),
    }


def validate_dir(directory: str | os.PathLike) -> list:
    """Load an endpoint folder the way ``globus-compute-endpoint`` does.

    ``config.yaml`` through ``get_config``, with the checks ``start`` makes
    before it logs in (no ``engine``; an ``email`` when it names an identity
    mapping, i.e. is meant to run as root); the identity mapping file through
    the endpoint's ``PosixIdentityMapper``; ``user_config_template.yaml.j2``
    through ``load_user_config_template`` and ``render_config_user_template``
    with the folder's ``user_config_schema.json`` and no user options (as for a
    user who passes none), then ``load_config_yaml``, which must give an
    engine; ``user_environment.yaml`` must be a mapping of names to values.

    Returns
    -------
    list
        ``[manager, user]``: the loaded ``CoreEndpointConfig`` and
        ``UserEndpointConfig``, the latter's engine shut down.

    Raises
    ------
    ValueError
        Naming the file that the endpoint could not load, or the check it fails.
    """
    import yaml
    from globus_compute_endpoint.endpoint.config import CoreEndpointConfig, UserEndpointConfig, utils
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    directory = Path(directory)
    manager = _checked("config.yaml", lambda: utils.get_config(directory))
    if not isinstance(manager, CoreEndpointConfig):
        raise ValueError(
            "config.yaml has an `engine` block: globus-compute-endpoint 4.x will not start it (the engine "
            "belongs in user_config_template.yaml.j2)"
        )
    if manager.identity_mapping_config_path is not None:
        if not manager.email:
            raise ValueError(
                "config.yaml names an identity mapping (an endpoint run as root) but no `email`: globus-compute-endpoint will not start it"
            )
        _check_identity_mapping(manager.identity_mapping_config_path)
    template = directory / "user_config_template.yaml.j2"
    import pwd  # here, not at import: the client imports this module on every platform (client endpoint configure)

    identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], uuid.UUID(int=0))
    text = _checked(
        template.name,
        lambda: utils.render_config_user_template(
            parent_config=manager,
            user_config_template=utils.load_user_config_template(template),
            user_config_template_path=template,
            mapped_identity=identity,
            user_config_schema=utils.load_user_config_schema(directory / "user_config_schema.json"),
            user_opts={},
        ),
    )
    user = _checked(f"{template.name} (rendered)", lambda: utils.load_config_yaml(text))
    if not isinstance(user, UserEndpointConfig):
        raise ValueError(f"{template.name} has no `engine` block: the user endpoint process will not start")
    environment = yaml.safe_load((directory / "user_environment.yaml").read_text())
    if not isinstance(environment, dict) or "PATH" not in environment:
        raise ValueError("user_environment.yaml must be a mapping that sets PATH")
    return [manager, user]


def _check_identity_mapping(path: Path) -> None:
    from globus_compute_endpoint.endpoint.identity_mapper import PosixIdentityMapper

    try:
        mapper = PosixIdentityMapper(path, "mhd-configure-check")
    except Exception as exc:
        raise ValueError(f"identity mapping {path} does not load with the endpoint's own mapper: ({type(exc).__name__}) {exc}") from exc
    mapper.stop_watching()
    if not mapper.identity_mappings:
        raise ValueError(
            f"identity mapping {path} does not load with the endpoint's own mapper: it holds no mapping the endpoint knows"
            " (a list of objects with a DATA_TYPE such as expression_identity_mapping#1.0.0), so no task could run"
        )


def _checked(label: str, load):
    try:
        config = load()
    except Exception as exc:
        raise ValueError(f"{label} does not load with the endpoint's own loader: {exc}") from exc
    engine = getattr(config, "engine", None)
    if engine is not None:
        engine.shutdown()
    return config


#: Scheduler options (EndpointSpec field, option) and the providers that use them.
_PROVIDER_OPTIONS = (
    ("partition", "--partition", ("slurm", "pbspro")),
    ("account", "--account", ("slurm", "pbspro")),
    ("gpu_type", "--gpu-type", ("slurm",)),
    ("cpus_per_node", "--cpus-per-node", ("pbspro",)),
    ("walltime", "--walltime", ("slurm", "pbspro")),
    ("max_blocks", "--max-blocks", ("slurm", "pbspro")),
)


def ignored_options(spec: EndpointSpec) -> list[str]:
    """The scheduler options given a value other than their default that ``spec.provider`` does not use."""
    defaults = {f.name: f.default for f in dataclasses.fields(EndpointSpec)}
    return [opt for name, opt, used in _PROVIDER_OPTIONS if spec.provider not in used and getattr(spec, name) != defaults[name]]


def _function_id(value: object) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"function id {value!r} is not a UUID (the one 'client register' printed)") from None


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # ~/.globus_compute: 0700 as the endpoint makes it
    directory.mkdir(exist_ok=True, mode=0o700)
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o600)


def endpoint_dir(name: str, home: str | os.PathLike | None = None) -> Path:
    """``<home>/.globus_compute/<name>`` (home: ``$HOME``)."""
    return Path(home or Path.home()) / ".globus_compute" / name


def start_command(spec: EndpointSpec, home: str | os.PathLike | None = None) -> str:
    """The shell command that starts the endpoint that :func:`install_endpoint` wrote.

    With a ``home`` other than the caller's, the endpoint must be told where
    the configuration is (``GLOBUS_COMPUTE_USER_DIR``).
    """
    command = f"{shlex.quote(os.path.join(spec.env, 'bin', 'globus-compute-endpoint'))} start {spec.name}"
    if home is not None and Path(home).resolve() != Path.home().resolve():
        command = f"GLOBUS_COMPUTE_USER_DIR={shlex.quote(str(Path(home).resolve() / '.globus_compute'))} {command}"
    return command


def install_endpoint(spec: EndpointSpec, *, home: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Render, validate and write the endpoint folder.

    Parameters
    ----------
    spec : EndpointSpec
    home : path, optional
        Folder holding ``.globus_compute`` (default: the user's home); see
        :func:`start_command` for how the endpoint then finds it.
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
        When the endpoint's loader, or a check of ``start``, rejects a rendered file.
    """
    directory = endpoint_dir(spec.name, home)
    files = render_endpoint(spec)
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        raise FileExistsError(f"{directory} already has {', '.join(existing)}; give --force to overwrite them")
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-check-") as scratch:
        _write(Path(scratch) / spec.name, files)
        validate_dir(Path(scratch) / spec.name)
    _write(directory, files)
    return directory
