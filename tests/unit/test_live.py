"""The live section page (``mhd.client.live``): the address, the server's answers, the folder kept current."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import fake, run, write_results
from mhd.client.live import LiveServer, SectionPage, parse_address, waiting_state
from mhd.client.rule import Rule
from mhd.contracts.files import REPORT_DIR

pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.mark.parametrize(
    ("text", "address"),
    [("8000", ("127.0.0.1", 8000)), ("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:0", ("::1", 0)), ("localhost:1", ("localhost", 1))],
)
def test_an_address_is_this_machine_unless_a_host_is_named(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["http", "host:", "70000", "-1"])
def test_a_bad_address_says_what_is_expected(text):
    with pytest.raises(ValueError, match="PORT|0..65535"):
        parse_address(text)


def _section(tmp_path, n=9):
    section = tmp_path / "s"
    write_results(section, [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(n)])
    return section


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, reply.read()


def _until(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_the_server_answers_the_page_and_newer_states_only(tmp_path):
    section = tmp_path / "s"
    section.mkdir()
    waiting = waiting_state("s", Rule(), {"section": str(section)}, None)
    server = LiveServer(("127.0.0.1", 0), waiting).start()
    page = SectionPage(section, section, Rule(), {"executor": "local"}, server, every=3600).start()
    try:
        status, body = _get(server.url)  # before the folder has results: a page that waits, with its settings
        assert status == 200 and b"<title>mhd: s</title>" in body and server.local
        assert _get(f"{server.url}state.json?v=0")[0] == 204
        page.update(verdicts=0, pending=3)  # tiles seen, none judged yet (the warm-up): the page says so
        _until(lambda: server.state()["version"] == 1)
        status, body = _get(f"{server.url}state.json?v=0")
        assert status == 200 and json.loads(body)["progress"]["pending"] == 3 and json.loads(body)["total"] == 0
        write_results(section, [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(9)])
        page.update(verdicts=9, pending=2)
        _until(lambda: server.state()["version"] == 3)  # the verdicts at once (2), then with the figures drawn (3)
        status, body = _get(f"{server.url}state.json?v=1")
        state = json.loads(body)
        assert status == 200 and state["version"] == 3 and state["total"] == 9 and state["progress"]["pending"] == 2
        assert _get(f"{server.url}state.json?v=3")[0] == 204  # nothing newer
        figures = [f["src"] for f in state["figures"]]  # linked, not inside the state: fetched once each
        assert figures and all(src.startswith("img/") and src.endswith(".png") for src in figures)
        assert all(_get(server.url + src)[1][:8] == b"\x89PNG\r\n\x1a\n" for src in figures)
        for path in ("mhd-results.jsonl", "../s/mhd-results.jsonl", "tile_r0_c0.png", "img/0123.png", "img/../state.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _get(server.url + path)
            assert refused.value.code == 404
    finally:
        page.close()
        server.close()
    with pytest.raises(urllib.error.URLError):
        _get(server.url)  # stopped with the watch


def test_the_folder_is_written_at_once_then_at_most_every_period_and_at_the_end(tmp_path):
    section = _section(tmp_path)
    server = LiveServer(("127.0.0.1", 0), waiting_state("s", Rule(), {}, None))  # what it is given to serve
    page = SectionPage(section, section, Rule(), {}, server, every=3600).start()
    folder = section / REPORT_DIR
    page.update(verdicts=9, pending=0)
    _until(lambda: (folder / "index.html").exists())
    first = (folder / "index.html").stat().st_mtime_ns
    write_results(section, [fake(f"tile_r0_c{c}.png", 1.4e4, blur=0.8 + 0.01 * c, blur_err=0.02) for c in range(10)])
    page.update(verdicts=10, pending=0)
    _until(lambda: server.state()["total"] == 10)  # the new state at once
    assert (folder / "index.html").stat().st_mtime_ns == first  # the files within the period: not yet
    page.close(unscored=2)  # the watch ended with two tiles seen and not scored
    written = (folder / "index.html").read_text()
    assert '"total":10' in written and "tile_r0_c9.png" in (folder / "mhd-results.csv").read_text()
    assert server.state()["progress"]["ended"] is True and server.state()["progress"]["pending"] == 2
    assert '"ended":true' in written and '"pending":2' in written
    server.close()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # every file replaced whole


def test_watch_on_a_port_in_use_is_one_line_and_status_1(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        out = run("watch", "--dir", tmp_path / "not yet", "--serve", port, "--idle-exit", 0)  # at once, not when the folder comes
        assert out.exit_code == 1 and f"Error: cannot serve the page on 127.0.0.1:{port} (--serve): Address already in use" in out.output
        assert "Traceback" not in out.output
    finally:
        taken.close()
    bad = run("watch", "--dir", tmp_path, "--serve", "http")
    assert bad.exit_code == 64 and "expected [HOST:]PORT" in bad.output


def test_a_page_on_this_machine_only_answers_to_its_loopback_names(tmp_path):
    """DNS rebinding: a web page elsewhere that points a name of its own at 127.0.0.1 is refused (421)."""
    import http.client

    server = LiveServer(("127.0.0.1", 0), waiting_state("s", Rule(), {}, None)).start()
    try:
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        for host, status in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"evil.example:{port}", 421), ("", 421)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", "/state.json", skip_host=True)
            if host:
                conn.putheader("Host", host)
            conn.endheaders()
            assert conn.getresponse().status == status, host
            conn.close()
    finally:
        server.close()
    lab = LiveServer(("0.0.0.0", 0), {})
    assert not lab.local and lab.accepts("mhd-pc.lab.example:8000")  # named for the lab: any name it is reached by
    lab.close()
