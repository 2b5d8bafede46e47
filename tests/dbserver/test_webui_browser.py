"""The webui in a real headless browser (Debian's `chromium`): the pages render, their
JavaScript runs and reads the JSON API, and a screenshot can be taken."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)


def chromium(profile: Path, *args: str) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *args,
        ],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def dump_dom(profile: Path, url: str) -> str:
    """The DOM after the page's scripts ran (virtual time lets their timers and fetches run)."""
    return chromium(profile, "--virtual-time-budget=3000", "--dump-dom", url)


def test_the_list_page_is_refreshed_from_the_api_by_its_script(webui, tmp_path: Path) -> None:
    web, ids = webui
    dom = dump_dom(tmp_path / "profile", f"{web.url}/")
    assert re.search(r'<table id="calcs"[^>]*data-refreshed="\d{4}-', dom), "app.js did not run"
    rows = re.findall(r'<tr data-id="(\d+)">', dom)
    assert rows == [str(ids["running"]), str(ids["failed"]), str(ids["complete"])]
    assert 'class="status failed">failed<' in dom and "hazard &lt;demo&gt;" in dom
    assert re.search(r'id="total">3 recorded<', dom)
    assert 'id="workers">workerpools: 10.0.0.2 1/4 busy<' in dom


def test_a_running_calculation_page_follows_its_log(webui, tmp_path: Path) -> None:
    web, ids = webui
    dom = dump_dom(tmp_path / "profile", f"{web.url}/calc/{ids['running']}")
    assert re.search(r'id="facts"[^>]*data-refreshed="\d{4}-', dom), "app.js did not poll"
    assert 'class="status executing">executing<' in dom


def test_the_calc_page_screenshot_shows_the_chart(webui, tmp_path: Path) -> None:
    web, ids = webui
    png = tmp_path / "calc.png"
    chromium(
        tmp_path / "profile", "--window-size=1100,900", "--hide-scrollbars",
        f"--screenshot={png}", f"{web.url}/calc/{ids['complete']}",
    )
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (1100, 900)
    assert png.stat().st_size > 20_000  # a blank page compresses to a few kB
