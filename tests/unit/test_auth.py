"""Client login: token storage owner-only, the right app and scopes, tokens never printed."""

from __future__ import annotations

import logging
import sqlite3
import stat
import time

import globus_sdk
import pytest
import responses
from globus_sdk.token_storage import TokenStorageData

from mhd.client import auth

SECRET = "SECRET-ACCESS-TOKEN-0123456789"
COLLECTION = "4b116d3c-1703-4f8f-9f6f-39921e5864df"


@pytest.fixture(autouse=True)
def config_dir(isolated_config, tmp_path):
    """The client's configuration folder, of this test's own (``isolated_config``)."""
    return tmp_path / "cfg"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tokens_live_owner_only_in_the_config_folder(config_dir):
    app = auth.make_app()
    assert auth.token_path() == config_dir / "tokens.db"
    assert mode(config_dir) == 0o700 and mode(config_dir / "tokens.db") == 0o600
    assert isinstance(app, globus_sdk.UserApp) and app.login_required()


def test_user_app_uses_the_compute_client_id_unless_the_site_names_one(monkeypatch):
    from globus_compute_sdk.sdk.auth.globus_app import DEFAULT_CLIENT_ID

    assert str(auth.make_app().client_id) == DEFAULT_CLIENT_ID
    monkeypatch.setenv("MHD_GLOBUS_CLIENT_ID", COLLECTION)
    assert str(auth.make_app().client_id) == COLLECTION


def test_service_credentials_make_a_client_app_and_stay_off_disk(monkeypatch, config_dir):
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", COLLECTION)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cr3t-value")
    assert isinstance(auth.make_app(), globus_sdk.ClientApp)
    assert b"s3cr3t-value" not in (config_dir / "tokens.db").read_bytes()
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID")
    with pytest.raises(ValueError, match="without GLOBUS_COMPUTE_CLIENT_ID"):
        auth.make_app()


def test_one_app_asks_for_compute_transfer_and_collection_access():
    auth.compute_client()
    auth.transfer_client(collection_ids=[COLLECTION, None])
    requirements = {rs: " ".join(str(s) for s in scopes) for rs, scopes in auth._app(None).scope_requirements.items()}
    assert "facd7ccc-c5f4-42aa-916b-a0e270e2c2a9" in requirements["funcx_service"]
    assert f"{COLLECTION}/data_access" in requirements["transfer.api.globus.org"]


def store_tokens(app) -> None:
    now = int(time.time())
    data = {
        rs: TokenStorageData(
            rs,
            "c0ffee00-0000-4000-8000-000000000000",
            " ".join(str(s) for s in scopes),
            SECRET,
            "refresh-token-value",
            now + 3600,
            "Bearer",
        )
        for rs, scopes in app.scope_requirements.items()
    }
    app.token_storage.store_token_data_by_resource_server(data)


def test_stored_token_is_used_but_never_logged_or_printed(capsys, caplog):
    tc = auth.transfer_client()
    store_tokens(auth._app(None))
    with caplog.at_level(logging.DEBUG), responses.RequestsMock() as mock:
        mock.add(responses.GET, "https://transfer.api.globus.org/v0.10/task/abc", json={"task_id": "abc", "status": "SUCCEEDED"})
        assert tc.get_task("abc")["status"] == "SUCCEEDED"
        assert mock.calls[0].request.headers["Authorization"] == f"Bearer {SECRET}"
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err + caplog.text
    with sqlite3.connect(auth.token_path()) as db:  # stored by globus-sdk, nowhere else
        assert db.execute("select count(*) from token_storage").fetchone()[0] >= 2
