"""Globus login for the client: one app, tokens in SQLite, Compute and Transfer clients.

Tokens live only in globus-sdk's token storage: ``tokens.db`` (SQLite) in the
client's config folder (:func:`mhd.client.config.config_dir`), created
owner-only (folder 0700, file 0600). This module never prints or logs a token.

Identity
    A person logs in through a browser (``UserApp``, the Globus Compute SDK's
    public native client id unless ``MHD_GLOBUS_CLIENT_ID`` names the site's
    own). An unattended instrument PC can use service credentials instead:
    ``GLOBUS_COMPUTE_CLIENT_ID`` and ``GLOBUS_COMPUTE_CLIENT_SECRET`` in its
    environment (``ClientApp``; the secret is never written anywhere).

Scopes
    The app asks for Compute and Transfer at the first login, so one login
    serves ``client register``, ``client submit`` and Globus transfers; GCS
    mapped collections add their ``data_access`` scopes
    (:func:`transfer_client` with ``collection_ids``).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Iterable

__all__ = ["TOKEN_FILE", "LoginRequired", "make_app", "compute_client", "ensure_login", "transfer_client", "login", "logout", "token_path"]

#: Token database in the config folder.
TOKEN_FILE = "tokens.db"
APP_NAME = "mhd-client"


def token_path(config_dir: str | os.PathLike | None = None) -> Path:
    """Where the tokens are stored (``<config dir>/tokens.db``)."""
    from .config import config_dir as default_dir

    return Path(config_dir or default_dir()) / TOKEN_FILE


def _storage(config_dir: str | os.PathLike | None) -> Any:
    from globus_sdk.token_storage import SQLiteTokenStorage

    path = token_path(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    # created with a user-only umask; shared with the Compute Executor's submitter thread, as the SDK's own storage is
    storage = SQLiteTokenStorage(path, namespace=APP_NAME, connect_params={"check_same_thread": False})
    path.chmod(0o600)
    return storage


@functools.lru_cache(maxsize=None)
def _cached_app(config_dir: str) -> Any:
    return make_app(config_dir)


def make_app(config_dir: str | os.PathLike | None = None) -> Any:
    """A ``globus_sdk.GlobusApp`` storing tokens in ``<config_dir>/tokens.db``.

    Construction does no network I/O; the first API call without valid
    tokens starts a login (``UserApp``) or a client-credentials grant (``ClientApp``).

    Raises
    ------
    ValueError
        When ``GLOBUS_COMPUTE_CLIENT_SECRET`` is set without ``GLOBUS_COMPUTE_CLIENT_ID``.
    """
    import globus_sdk
    from globus_compute_sdk import Client
    from globus_compute_sdk.sdk.auth.globus_app import DEFAULT_CLIENT_ID

    config = globus_sdk.GlobusAppConfig(token_storage=_storage(config_dir), request_refresh_tokens=True)
    scopes = {
        "funcx_service": [Client.FUNCX_SCOPE],
        globus_sdk.TransferClient.scopes.resource_server: [globus_sdk.TransferClient.scopes.all],
    }
    client_id = os.environ.get("GLOBUS_COMPUTE_CLIENT_ID")
    secret = os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET")
    if secret and not client_id:
        raise ValueError(
            "GLOBUS_COMPUTE_CLIENT_SECRET is set without GLOBUS_COMPUTE_CLIENT_ID: set both for service credentials, or neither"
        )
    if client_id and secret:
        return globus_sdk.ClientApp(APP_NAME, client_id=client_id, client_secret=secret, scope_requirements=scopes, config=config)
    client_id = os.environ.get("MHD_GLOBUS_CLIENT_ID") or DEFAULT_CLIENT_ID
    return globus_sdk.UserApp(APP_NAME, client_id=client_id, scope_requirements=scopes, config=config)


def _app(app: Any) -> Any:
    if app is not None:
        return app
    return _cached_app(str(token_path().parent))


def compute_client(app: Any = None) -> Any:
    """A ``globus_compute_sdk.Client`` on ``app`` (default: the shared app of the config folder)."""
    from globus_compute_sdk import Client

    return Client(app=_app(app), do_version_check=False)


def transfer_client(app: Any = None, collection_ids: Iterable[str] = ()) -> Any:
    """A ``globus_sdk.TransferClient`` on ``app``, with ``data_access`` for GCS mapped collections.

    Parameters
    ----------
    collection_ids : iterable of str
        Collections (e.g. the instrument's and the endpoint's) that need a
        ``data_access`` consent; None entries are skipped.
    """
    import globus_sdk

    tc = globus_sdk.TransferClient(app=_app(app))
    ids = [str(c) for c in collection_ids if c]
    if ids:
        tc.add_app_data_access_scope(ids)
    return tc


class LoginRequired(RuntimeError):
    """No valid Globus login, and none can be made here (no terminal to prompt on, or it failed)."""


#: What to run when a login is needed and cannot be prompted for.
LOGIN_HINT = (
    "run 'client login' once as this user at a terminal (an unattended PC can use GLOBUS_COMPUTE_CLIENT_ID and "
    "GLOBUS_COMPUTE_CLIENT_SECRET)"
)


def ensure_login(app: Any = None, interactive: bool | None = None) -> None:
    """Make sure the stored tokens serve Compute and Transfer, before any task is sent.

    With valid (or refreshable) tokens this does nothing. Service
    credentials get their tokens without a prompt. Otherwise a person must
    log in: at a terminal the login is started now; without one (a service,
    cron, ``| tee`` with no terminal on stdin) :class:`LoginRequired` says
    what to run, instead of a login prompt inside every task.

    Parameters
    ----------
    interactive : bool, optional
        Whether a login may be prompted for (default: stdin is a terminal).

    Raises
    ------
    LoginRequired
    """
    import globus_sdk

    app = _app(app)
    if not app.login_required():
        return
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not (interactive or isinstance(app, globus_sdk.ClientApp)):
        raise LoginRequired(f"not logged in to Globus, and there is no terminal here to log in from: {LOGIN_HINT}")
    try:
        app.login()
    except Exception as exc:  # EOF at the prompt, a refused consent, no network
        raise LoginRequired(f"Globus login failed ({type(exc).__name__}: {exc}): {LOGIN_HINT}") from None


def login(app: Any = None, *, force: bool = False, interactive: bool | None = None) -> None:
    """Log in now (browser / code prompt for a ``UserApp``) unless valid tokens exist.

    Raises
    ------
    LoginRequired
        A person must log in and there is no terminal to prompt on
        (``interactive``; default: stdin is a terminal); service
        credentials need none.
    """
    import globus_sdk

    app = _app(app)
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive and not isinstance(app, globus_sdk.ClientApp) and (force or app.login_required()):
        raise LoginRequired(f"there is no terminal here to log in from: {LOGIN_HINT}")
    app.login(force=force)


def logout(app: Any = None) -> None:
    """Revoke and delete the stored tokens."""
    _app(app).logout()
