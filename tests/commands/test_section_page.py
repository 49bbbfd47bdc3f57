"""The section page in a real headless browser (Debian's chromium, driven by Selenium through chromedriver): the
static report ``client report`` writes, and the live page ``client watch --serve`` serves while tiles land."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import EXAMPLE, copy_example, run
from mhd.client.live import parse_address

pytestmark = pytest.mark.usefixtures("isolated_config")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser(tmp_path):
    """A headless chromium (a profile of its own, no background traffic: this machine has no network)."""
    if not (CHROMIUM and CHROMEDRIVER):
        why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager downloads nothing: the browser and driver are given
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1300,1800", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _errors(driver) -> list[str]:
    """What the page's script reported as errors."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _cards(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.get_attribute("data-tile") for c in driver.find_elements(By.CSS_SELECTOR, "#flagged .card")]


def test_the_static_report_shows_every_tile_offline_and_sorts(tmp_path, browser):
    from selenium.webdriver.common.by import By

    section = copy_example(tmp_path / "section_042")
    assert run("submit", "--dir", section).exit_code == 2
    out = run("report", "--dir", section)
    assert out.exit_code == 0, out.output
    page = section / "mhd-report" / "index.html"
    browser.get(page.as_uri())
    listed = [line.split("\t")[0] for line in (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines()]
    assert _cards(browser) == listed == ["tile_r1_c2.png", "tile_r2_c3.png", "tile_r3_c1.png"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#tiles tbody tr")
    assert len(rows) == 16 and [r.get_attribute("data-tile") for r in rows][:2] == ["tile_r0_c0.png", "tile_r0_c1.tif"]
    verdicts = {r.get_attribute("data-tile"): r.get_attribute("data-verdict") for r in rows}
    assert [t for t, v in verdicts.items() if v == "oof"] == listed and verdicts["tile_r0_c3.png"] == "empty"
    # every thumbnail and figure drew (embedded: the page needs no network and no other file)
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    assert len(images) == 3 * 2 + 4 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    assert browser.execute_script("return performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length") == 0
    # a click on a heading sorts the table by it: the blurriest tile first on the second click
    heading = next(h for h in browser.find_elements(By.CSS_SELECTOR, "#tiles th") if h.get_attribute("data-key") == "blur")
    heading.click()
    heading = next(h for h in browser.find_elements(By.CSS_SELECTOR, "#tiles th") if h.get_attribute("data-key") == "blur")
    heading.click()
    first = browser.find_element(By.CSS_SELECTOR, "#tiles tbody tr").get_attribute("data-tile")
    assert first == "tile_r1_c2.png"
    assert browser.find_element(By.ID, "rule").text.startswith("relative: a tile is out of focus")
    assert not _errors(browser)
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG


class _Watch:
    """``client watch --serve 0`` in a session of its own, its output collected by a thread."""

    def __init__(self, section: Path, env: dict) -> None:
        argv = [sys.executable, "-m", "mhd.client", "watch", "--dir", str(section), "--serve", "0", "--poll", "0.1"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def url(self, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [line.split()[3] for line in self.lines if line.startswith("live section page: ")]
            if found:
                return found[0]
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("no live page announced:\n" + "".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
        return self.proc.wait(timeout=120)


def _land(src: Path, dest: Path) -> None:
    """A tile written as a microscope's software does: under a temporary name, then renamed into place."""
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def test_the_live_page_shows_a_flagged_tile_as_its_verdict_lands(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    section = tmp_path / "section_043"
    section.mkdir()
    env = {**os.environ, "MHD_WORKERS": "2", "MHD_WARMUP": "6"}
    watch = _Watch(section, env)
    try:
        url = watch.url()
        assert parse_address(url.split("/")[2])[0] == "127.0.0.1"  # this machine only, unless a host is named
        sharp = [
            "tile_r0_c0.png",
            "tile_r0_c1.tif",
            "tile_r0_c2.png",
            "tile_r1_c0.png",
            "tile_r1_c1.png",
            "tile_r1_c3.png",
            "tile_r2_c0.tif",
        ]
        for name in sharp:
            _land(EXAMPLE / name, section / name)
        browser.get(url)
        browser.execute_script("window.mhdLoaded = 'once'")  # gone if the page reloads
        rows = lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tiles tbody tr"))  # noqa: E731
        WebDriverWait(browser, 60, 0.2).until(lambda d: rows(d) == len(sharp))
        assert _cards(browser) == []
        _land(EXAMPLE / "tile_r1_c2.png", section / "tile_r1_c2.png")  # defocused
        WebDriverWait(browser, 60, 0.2).until(lambda d: "tile_r1_c2.png" in _cards(d))
        assert browser.execute_script("return window.mhdLoaded") == "once"
        assert rows(browser) == len(sharp) + 1
        card = browser.find_element(By.CSS_SELECTOR, '#flagged .card[data-tile="tile_r1_c2.png"]')
        assert "defocus" in card.text and "new" in card.get_attribute("class")
        thumbs = card.find_elements(By.CSS_SELECTOR, "img")  # linked from the state, served by the watch
        WebDriverWait(browser, 30, 0.2).until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in thumbs))
        assert len(thumbs) == 2 and all("/img/" in i.get_attribute("src") for i in thumbs)
        counts = {s.get_attribute("data-verdict"): s.text for s in browser.find_elements(By.CSS_SELECTOR, "#counts span")}
        assert counts["oof"] == "oof 1" and counts["ok"] == f"ok {len(sharp)}"
        assert "pending" in browser.find_element(By.ID, "progress").text
        assert not _errors(browser)
        browser.save_screenshot(str(tmp_path / "live.png"))
        assert (tmp_path / "live.png").read_bytes()[:8] == PNG
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "mhd-results.jsonl", timeout=10)
        assert missing.value.code == 404  # the page, its state, nothing else
    finally:
        status = watch.stop()
    assert status == 2, "".join(watch.lines)
    written = (section / "mhd-report" / "index.html").read_text()
    state = json.loads(written.split('type="application/json">')[1].split("</script>")[0])
    assert [f["tile"] for f in state["flagged"]] == ["tile_r1_c2.png"] and state["total"] == len(sharp) + 1
