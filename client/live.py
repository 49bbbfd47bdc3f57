"""A running ``watch``'s page: ``mhd-report/`` kept current, and served live with ``--serve``.

:class:`SectionPage` hears from the watch loop (main thread) how many verdicts
are recorded and how many tiles wait, and does the rest on one background
thread, from the results log as recorded (whole records: the run keeps some
without their cells): each new verdict makes a
new page state (the verdicts, counts, progress and the flagged tiles with their
thumbnails) at once, which the live page picks up within a second; the figures
are drawn again, and ``mhd-report/`` (page, figures, CSV, re-acquisition list)
rewritten, at most every ``every`` seconds and when the watch ends. Every file
is replaced whole (:func:`mhd.client.report.write_atomic`).

The server (:class:`http.server.ThreadingHTTPServer`, standard library) answers
``GET /`` with the live page, ``GET /state.json?v=N`` with the newest state
(or 204 while version ``N`` is still the newest) and ``GET /img/NAME`` with the
images that state links to; nothing else. It binds to
localhost unless a host is named.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mhd.contracts.files import REPORT_DIR, RESULTS_NAME

from .results import read_records
from .rule import Rule

__all__ = ["LOCALHOST", "LOCAL_HOSTS", "LiveServer", "SectionPage", "parse_address", "waiting_state"]

log = logging.getLogger(__name__)

#: Host the live page binds to when ``--serve`` names only a port: this machine alone.
LOCALHOST = "127.0.0.1"
#: Least seconds between two page states (the live page asks once a second): a busy section's verdicts are
#: taken together instead of each costing the client a new state.
MIN_INTERVAL = 1.0
#: Hosts that only this machine reaches.
LOCAL_HOSTS = frozenset({LOCALHOST, "localhost", "::1"})


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``8000``, ``0.0.0.0:8000``, ``[::1]:8000``) as ``(host, port)``; host localhost by default.

    Raises
    ------
    ValueError
        For a port that is not a number in 0..65535 (0: any free port).
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else LOCALHOST
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: expected [HOST:]PORT, e.g. 8000 or 0.0.0.0:8000") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: the port must be 0..65535")
    return host or LOCALHOST, number


class SectionPage:
    """Keeps a watched section's page current (see the module docstring).

    Parameters
    ----------
    section : Path
        The section folder (thumbnails are read from it).
    results : Path
        The folder of its results log; the page goes to ``results/mhd-report/``.
    rule : Rule
    settings : dict of str to str
        The run's settings, shown on the page.
    server : LiveServer, optional
        Serves each new state (``watch --serve``).
    every : float
        Seconds between redrawings of the figures and rewritings of the folder.
    """

    def __init__(
        self, section: Path, results: Path, rule: Rule, settings: dict[str, str], server: "LiveServer | None" = None, every: float = 10.0
    ) -> None:
        self.section, self.results, self.rule, self.settings, self.every = section, results, rule, settings, every
        self.folder = results / REPORT_DIR
        self.server = server
        self._wake = threading.Condition()
        self._seen = (-1, -1)
        self._closing = False
        self._dirty = False
        self._version = 0
        self._started = time.monotonic()
        self._verdicts = 0
        self._pending = 0
        self._figures: dict[str, bytes] = {}
        self._drawn_at = 0  # tiles the figures show
        self._written = -math.inf  # monotonic time of the last full write
        self._stale = False  # a state was made since the last full write
        self._thread = threading.Thread(target=self._loop, name="mhd-page", daemon=True)

    def start(self) -> "SectionPage":
        self._thread.start()
        return self

    def update(self, verdicts: int, pending: int) -> None:
        """The watch loop's news: the verdicts recorded so far, and the tiles seen that have no verdict yet."""
        if (verdicts, pending) == self._seen:
            return
        with self._wake:
            self._seen, self._verdicts, self._pending = (verdicts, pending), verdicts, pending
            self._dirty = True
            self._wake.notify()

    def close(self, unscored: int = 0) -> None:
        """Write the page a last time, saying the watch ended and how many tiles it left unscored; waits for that
        write (seconds on a section of thousands of tiles). The server, the caller's, goes on until it is closed."""
        with self._wake:
            self._closing, self._pending, self._dirty = True, unscored, True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        """Build a new state for each change; draw and write everything when ``every`` seconds have passed since the
        last full write (or when closing) and something changed since. Each build is followed by a pause as long
        as it took (at least :data:`MIN_INTERVAL`), so the page never takes more than half the client's time."""
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._dirty or self._closing, timeout=self._until_due())
                dirty, closing, self._dirty = self._dirty, self._closing, False
                pending, verdicts = self._pending, self._verdicts
            due = time.monotonic() >= self._written + self.every
            if dirty or (self._stale and (due or closing)):
                began = time.monotonic()
                try:
                    self._build(pending, verdicts, full=due or closing, ended=closing)
                except Exception as exc:  # a full disk, a tile gone: the watch goes on, the log says why
                    log.warning("the section page was not updated: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
                took = time.monotonic() - began
                with self._wake:  # news meanwhile is taken together, in one state after the pause
                    self._wake.wait_for(lambda: self._closing, timeout=max(MIN_INTERVAL, took) - took)
            if closing:
                return

    def _until_due(self) -> float | None:
        """Seconds until the figures are due again, while a change is not yet drawn; None (wait for news) else."""
        return max(0.05, self._written + self.every - time.monotonic()) if self._stale else None

    def _build(self, pending: int, verdicts: int, full: bool, ended: bool = False) -> None:
        """A new state from the results log as recorded, served at once; with ``full`` the figures are then drawn
        and the folder written, and the state served again with them. Without a server only ``full`` does work."""
        from .page import section_state
        from .report import settings_of, view_section, write_report
        from .thumbs import thumbnails

        if self.server is None and not full:  # nobody to show a state to: the folder's next write has the news
            self._stale = True
            return
        records, _ = read_records(self.results / RESULTS_NAME)
        elapsed = time.monotonic() - self._started
        progress = {"pending": pending, "rate": round(60.0 * verdicts / max(elapsed, 1e-9), 2), "elapsed": round(elapsed, 1)}
        if ended:
            progress["ended"] = True
        settings = {"section": str(self.section), "results": str(self.results / RESULTS_NAME), **self.settings}
        if not records:  # no verdict yet (the warm-up holds them): the rule, the settings and the tiles pending
            return self._publish(waiting_state(self.section.name, self.rule, settings, progress))
        view = view_section(self.section.name, records.values(), self.rule)
        settings = {**settings, **settings_of(view)}
        if self.server is not None:
            thumbs = thumbnails(self.section, view)
            self._publish(section_state(view, settings, progress, self._figures, thumbs, self._drawn_at, self.server.link))
        self._stale = not full
        if full:
            began = time.monotonic()
            rep = write_report(view, self.section, self.folder, settings, progress)
            self._figures = {p.name: p.read_bytes() for p in (rep.focus, rep.montage, rep.focus_maps, rep.density) if p is not None}
            self._drawn_at = len(records)
            if self.server is not None:
                self._publish(section_state(view, settings, progress, self._figures, thumbnails(self.section, view), link=self.server.link))
            self._written = time.monotonic()
            self.every = max(self.every, 3 * (self._written - began))  # a large section: the figures at most a third of the time

    def _publish(self, state: dict[str, Any]) -> None:
        self._version += 1
        if self.server is not None:
            self.server.publish({**state, "version": self._version})


def waiting_state(name: str, rule: Rule, settings: dict[str, str], progress: dict[str, Any] | None) -> dict[str, Any]:
    """The page's state before any verdict: the section's name, the rule, the settings (and the tiles pending)."""
    from .judge import Baseline
    from .page import section_state
    from .report import SectionView

    view = SectionView(name, rule, [], Baseline(math.nan, math.nan, 0, math.nan), "", "", math.nan)
    return section_state(view, settings, progress, {}, {})


class LiveServer:
    """The live page's server (``watch --serve``), bound when made, before the section's folder need exist.

    It answers ``GET /`` with the live page of the newest state :meth:`publish`-ed (until the first, a page
    that waits for the section), ``GET /state.json?v=N`` with that state, or 204 while it is version ``N``,
    ``GET /img/NAME`` with an image the state links to (:meth:`link`); anything else 404. The standard
    library's :class:`http.server.ThreadingHTTPServer`, on a thread of its own.

    Raises
    ------
    OSError
        When the address is taken or not this machine's (the message names it and ``--serve``).
    """

    def __init__(self, address: tuple[str, int], waiting: dict[str, Any]) -> None:
        self._state = {**waiting, "version": 0}
        self._images: dict[str, bytes] = {}  # by name: those of the state served, and of the one before
        self._linked: dict[str, bytes] = {}  # those of the state being made
        self._last: set[str] = set()  # the names of the state served
        self._serving: threading.Thread | None = None
        self._httpd = _bind(address, self)

    @property
    def url(self) -> str:
        """The page's address; a wildcard host (every interface) is given as this machine's name."""
        host, port = self._httpd.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def local(self) -> bool:
        """Whether only this machine can reach it."""
        return self._httpd.server_address[0] in LOCAL_HOSTS or self._httpd.server_address[0].startswith("127.")

    def accepts(self, host: str) -> bool:
        """Whether a request naming ``host`` (its ``Host`` header) is answered: any, when the server listens on
        other machines' behalf; bound to this machine only, just its loopback names, so that a web page elsewhere
        cannot read the section through a name that it points here (DNS rebinding)."""
        if not self.local:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in LOCAL_HOSTS or name.startswith("127.")

    def start(self) -> "LiveServer":
        self._serving = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="mhd-serve", daemon=True)
        self._serving.start()
        return self

    def link(self, image: bytes) -> str:
        """The URL the page fetches ``image`` from (named by its content: a browser fetches each once), served from
        the next :meth:`publish` on. The state carries links instead of the images themselves, so a page that asks
        for each new state does not download every thumbnail and figure again."""
        from .page import image_kind

        name = f"{hashlib.sha256(image).hexdigest()[:24]}.{'png' if image_kind(image) == 'png' else 'jpg'}"
        self._linked[name] = image
        return f"img/{name}"

    def publish(self, state: dict[str, Any]) -> None:
        """Serve ``state`` from now on (its ``version`` grows with each), and its images; those of the state before
        are kept for a page that is still fetching them, older ones dropped (a night's figures would fill memory)."""
        current = {name: self._images[name] for name in self._last if name in self._images}
        self._images, self._last, self._linked = {**current, **self._linked}, set(self._linked), {}
        self._state = state

    def state(self) -> dict[str, Any]:
        return self._state

    def image(self, name: str) -> bytes | None:
        """An image of the state served (or the one before), by the name :meth:`link` gave it."""
        return self._images.get(name)

    def close(self) -> None:
        """Stop serving (when started) and free the address."""
        if self._serving is not None:
            self._httpd.shutdown()
        self._httpd.server_close()


def _bind(address: tuple[str, int], server: LiveServer) -> http.server.ThreadingHTTPServer:
    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "mhd-watch"

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            from .page import render_page

            if not server.accepts(self.headers.get("Host", "")):
                return self._send(421, "text/plain", b"this page answers to this machine's own address only\n")
            url = urlsplit(self.path)
            state = server.state()
            if url.path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", render_page(state, live=True).encode())
            if url.path.startswith("/img/"):
                image = server.image(url.path[len("/img/") :])
                if image is None:
                    return self._send(404, "text/plain", b"not found\n")
                kind = "image/png" if url.path.endswith(".png") else "image/jpeg"
                return self._send(200, kind, image, cache="public, max-age=86400, immutable")  # named by its content
            if url.path == "/state.json":
                if parse_qs(url.query).get("v", [""])[0] == str(state["version"]):
                    return self._send(204, "application/json", b"")
                return self._send(200, "application/json", json.dumps(state, allow_nan=False).encode())
            self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, kind: str, body: bytes, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", cache)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if int(code) >= 400 if str(code).isdigit() else True:  # a page's polls, once a second, are not logged
                log.debug("page: %s %s", self.requestline, code)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("page: " + format, *args)

    try:
        return Server(address, Handler)
    except OSError as exc:  # taken, or not an address of this machine
        raise OSError(exc.errno, f"cannot serve the page on {address[0]}:{address[1]} (--serve): {exc.strerror or exc}") from None
