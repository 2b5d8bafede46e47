"""The webui's login (multi_user) in a real headless Chromium, driven by Playwright.

Debian's `chromium` is launched by Playwright (never `playwright install`); without chromium
or the playwright package the tests are reported skipped, not passed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from webuilogin import LoginWebUI

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install -r requirements.lock)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 600})
    yield context.new_page()
    context.close()


def log_in(page: Any, web: LoginWebUI, user: str, password: str) -> None:
    page.goto(f"{web.url}/")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state("networkidle")


def listed_owners(page: Any) -> set[str]:
    return set(page.locator("#calcs tbody td:nth-child(3)").all_inner_texts())


def test_the_list_page_sends_to_the_login_form(page: Any, login_webui: LoginWebUI) -> None:
    page.goto(f"{login_webui.url}/")
    assert page.url == f"{login_webui.url}/accounts/login/?next=/"
    assert page.locator("h1").inner_text() == "Log in"
    assert page.locator("#password").get_attribute("type") == "password"
    assert "alice" not in page.content()


def test_a_wrong_password_is_refused_in_the_browser(page: Any, login_webui: LoginWebUI) -> None:
    log_in(page, login_webui, "alice", "not her password")
    assert page.locator("#login-error").inner_text() == "Wrong user name or password."
    assert page.url.startswith(f"{login_webui.url}/accounts/login/")
    assert page.context.cookies() == []
    assert page.locator("#calcs").count() == 0


def test_alice_logs_in_and_sees_only_her_calculations(page: Any, login_webui: LoginWebUI) -> None:
    log_in(page, login_webui, "alice", login_webui.passwords["alice"])
    assert page.url == f"{login_webui.url}/"
    assert page.locator("#whoami").inner_text() == "alice"
    # after app.js refreshed the table from the API (with the session cookie)
    page.wait_for_selector("#calcs[data-refreshed]")
    assert listed_owners(page) == {"alice"}
    ids = sorted(int(x) for x in page.locator("#calcs tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)"))
    assert ids == login_webui.ids["alice"]
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "oqz_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts
    # bob's calculation, typed into the address bar
    bobs = login_webui.ids["bob"][0]
    response = page.goto(f"{login_webui.url}/calc/{bobs}")
    assert response.status == 403 and "secret study" not in page.content()


def test_the_admin_sees_every_calculation(page: Any, login_webui: LoginWebUI) -> None:
    log_in(page, login_webui, "openquake", login_webui.passwords["openquake"])
    page.wait_for_selector("#calcs[data-refreshed]")
    assert listed_owners(page) == {"alice", "bob", "openquake"}


def test_the_api_without_the_cookie_is_401_and_logout_ends_it(
    page: Any, login_webui: LoginWebUI
) -> None:
    api = page.context.request
    assert api.get(f"{login_webui.url}/v1/calc/list").status == 401
    log_in(page, login_webui, "bob", login_webui.passwords["bob"])
    listed = api.get(f"{login_webui.url}/v1/calc/list")
    assert listed.status == 200
    assert {c["owner"] for c in json.loads(listed.text())} == {"bob"}
    page.click("form.logout button")
    page.wait_for_load_state("networkidle")
    assert page.url == f"{login_webui.url}/accounts/login/"
    assert api.get(f"{login_webui.url}/v1/calc/list").status == 401
