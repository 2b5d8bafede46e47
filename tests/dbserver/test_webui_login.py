"""The webui's login (multi_user, issue 20): a real `oqz webui start` process over HTTP.

The attack it defeats: any local account could GET /v1/calc/list and read every calculation
(owner, description, host, pid), because the webui had no login and asked the dbserver as an
admin. Now the API answers 401 without a session, the pages send to /accounts/login/, and
after a login the dbserver is asked as that user: alice sees hers, the admin sees all.
"""

from __future__ import annotations

import http.cookiejar
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from oqzmq.webui.login import Login, hash_password, read_passwords, verify_password
from webuilogin import OQZ, LoginWebUI, set_password


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """urllib with a cookie jar, not following redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            NoRedirect, urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, path: str, form: dict[str, str] | None = None
                ) -> tuple[int, Any, dict[str, str]]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data=data, timeout=20) as reply:
                status, body, headers = reply.status, reply.read().decode(), dict(reply.headers)
        except urllib.error.HTTPError as error:
            status, body, headers = error.code, error.read().decode(), dict(error.headers)
        if headers.get("content-type", "").startswith("application/json"):
            body = json.loads(body)
        return status, body, headers

    def login(self, user: str, password: str) -> tuple[int, Any, dict[str, str]]:
        return self.request("/accounts/login/", {"username": user, "password": password})


def owners(calcs: list[dict[str, Any]]) -> set[str]:
    return {c["owner"] for c in calcs}


def test_without_a_session_the_api_is_refused_and_pages_send_to_the_login(
    login_webui: LoginWebUI,
) -> None:
    anonymous = Browser(login_webui.url)
    alices = login_webui.ids["alice"][0]
    for path in ("/v1/calc/list", f"/v1/calc/{alices}/status", f"/v1/calc/{alices}/log",
                 "/v1/workers/status"):
        status, body, _ = anonymous.request(path)
        assert status == 401, path
        assert "log in" in body["error"] and "alice" not in json.dumps(body)
    status, _, headers = anonymous.request(f"/calc/{alices}")
    assert status == 303 and headers["location"] == f"/accounts/login/?next=/calc/{alices}"
    status, page, _ = anonymous.request("/accounts/login/")
    assert status == 200 and 'type="password"' in page and "alice's" not in page


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "x" * 12),
                                                ("alice", "")])
def test_a_wrong_password_or_unknown_user_is_refused_alike(
    login_webui: LoginWebUI, user: str, password: str
) -> None:
    browser = Browser(login_webui.url)
    status, page, headers = browser.login(user, password)
    assert status == 401 and "Wrong user name or password." in page
    assert "set-cookie" not in {k.lower() for k in headers}
    assert browser.request("/v1/calc/list")[0] == 401


def test_alice_sees_only_her_calculations_and_not_bobs(login_webui: LoginWebUI) -> None:
    alice = Browser(login_webui.url)
    status, _, headers = alice.login("alice", login_webui.passwords["alice"])
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
    status, calcs, headers = alice.request("/v1/calc/list")
    assert status == 200 and owners(calcs) == {"alice"}
    assert sorted(c["id"] for c in calcs) == login_webui.ids["alice"]
    assert headers["x-total-count"] == "2"
    # asking for bob's by name does not help, nor his calculation by id
    assert owners(alice.request("/v1/calc/list?user=bob")[1]) <= {"alice"}
    bobs = login_webui.ids["bob"][0]
    assert alice.request(f"/v1/calc/{bobs}/status")[0] == 403
    assert alice.request(f"/v1/calc/{bobs}/log")[0] == 403
    status, page, _ = alice.request(f"/calc/{bobs}")
    assert status == 403 and "secret study" not in page
    status, page, _ = alice.request("/")
    assert status == 200 and "alice&#39;s hazard" in page and "bob" not in page
    assert '<span id="whoami">alice</span>' in page


def test_the_admin_sees_everyones_calculations(login_webui: LoginWebUI) -> None:
    admin = Browser(login_webui.url)
    assert admin.login("openquake", login_webui.passwords["openquake"])[0] == 303
    status, calcs, _ = admin.request("/v1/calc/list")
    assert status == 200 and owners(calcs) == {"alice", "bob", "openquake"}
    bobs = login_webui.ids["bob"][0]
    assert admin.request(f"/v1/calc/{bobs}/status")[1]["description"] == "bob's secret study"


def test_logout_ends_the_session(login_webui: LoginWebUI) -> None:
    bob = Browser(login_webui.url)
    assert bob.login("bob", login_webui.passwords["bob"])[0] == 303
    assert bob.request("/v1/calc/list")[0] == 200
    status, _, headers = bob.request("/accounts/logout/", {})
    assert status == 303 and headers["location"] == "/accounts/login/"
    assert bob.request("/v1/calc/list")[0] == 401


def test_a_changed_password_ends_the_old_sessions(login_webui: LoginWebUI) -> None:
    bob = Browser(login_webui.url)
    assert bob.login("bob", login_webui.passwords["bob"])[0] == 303
    assert set_password(login_webui.env, "bob", "bob-new-password") == "changed"
    assert bob.request("/v1/calc/list")[0] == 401
    assert bob.login("bob", login_webui.passwords["bob"])[0] == 401
    assert bob.login("bob", "bob-new-password")[0] == 303


def test_a_forged_or_expired_cookie_is_refused(login_webui: LoginWebUI) -> None:
    browser = Browser(login_webui.url)
    assert browser.login("alice", login_webui.passwords["alice"])[0] == 303
    (cookie,) = list(browser.jar)
    _, expiry, binding, mac = cookie.value.split("|")
    forged = Browser(login_webui.url)
    for value in (f"openquake|{expiry}|{binding}|{mac}", f"alice|{int(expiry) + 9999}|"
                  f"{binding}|{mac}", "alice", ""):
        opener = urllib.request.build_opener(NoRedirect)
        opener.addheaders = [("Cookie", f"oqz_session={value}")]
        try:
            opener.open(forged.base + "/v1/calc/list", timeout=20)
            raise AssertionError(f"accepted {value!r}")
        except urllib.error.HTTPError as error:
            assert error.code == 401
    # an expired session (the same key and file, its clock past the expiry)
    login = Login(login_webui.cfg.parent / "webui.passwd", b"k" * 32, seconds=60)
    token = login.issue("alice", now=1000.0)
    assert login.user(token, now=1059.0) == "alice"
    assert login.user(token, now=1061.0) is None


def test_after_a_login_the_next_page_is_this_sites_only(login_webui: LoginWebUI) -> None:
    browser = Browser(login_webui.url)
    for target, expected in (("/calc/1", "/calc/1"), ("https://evil.example/", "/"),
                             ("//evil.example/", "/")):
        status, _, headers = browser.request(
            "/accounts/login/", {"username": "alice", "password": login_webui.passwords["alice"],
                                 "next": target})
        assert status == 303 and headers["location"] == expected


def test_the_password_file_holds_scrypt_hashes_only(login_webui: LoginWebUI) -> None:
    path = login_webui.cfg.parent / "webui.passwd"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    text = path.read_text()
    assert all(password not in text for password in login_webui.passwords.values())
    entries = read_passwords(path)
    assert set(entries) == {"alice", "bob", "openquake"}
    assert verify_password("alice-webui-pw", entries["alice"])
    assert not verify_password("alice-webui-pw", entries["bob"])
    assert not verify_password("anything", None)
    assert hash_password("x") != hash_password("x")  # salted


def test_oqz_users_password_generates_once_and_keeps_it(login_webui: LoginWebUI) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*OQZ, "users", "password", *args], env=login_webui.env,
                              capture_output=True, text=True, timeout=60, check=False)

    # a password given again is unchanged; a dry run changes nothing
    assert set_password(login_webui.env, "alice", login_webui.passwords["alice"]) == "unchanged"
    assert run("nobody", "--keep", "--dry-run").stdout.strip() == "changed (dry run)"
    generated = run("nobody", "--keep")
    assert generated.returncode == 0 and generated.stdout.strip() == "changed", generated.stderr
    secret_file = login_webui.cfg.parent / "users" / "nobody.webui-password"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    password = secret_file.read_text().strip()
    assert len(password) >= 20 and password not in generated.stdout + generated.stderr
    assert run("nobody", "--keep").stdout.strip() == "unchanged"
    assert secret_file.read_text().strip() == password
    assert Browser(login_webui.url).login("nobody", password)[0] == 303
    assert run("nobody", "--remove").stdout.strip() == "changed"
    assert Browser(login_webui.url).login("nobody", password)[0] == 401
    refused = run("no-such-account-here")
    assert refused.returncode != 0 and "no account named" in refused.stderr


def test_without_multi_user_there_is_no_login(webui) -> None:
    web, _ = webui
    browser = Browser(web.url)
    assert browser.request("/v1/calc/list")[0] == 200
    status, _, headers = browser.request("/accounts/login/")
    assert status == 303 and headers["location"] == "/"


def test_an_unreadable_password_file_lets_nobody_in_without_an_error(tmp_path) -> None:
    path = tmp_path / "webui.passwd"
    path.write_text(f"alice:{hash_password('alice-pw')}\n")
    login = Login(path, b"k" * 32)
    token = login.issue("alice")
    assert login.check("alice", "alice-pw") and login.user(token) == "alice"
    # (the tests run as root, who reads a 0000 file: a directory stands for "cannot read")
    path.unlink()
    path.mkdir()
    assert not login.check("alice", "alice-pw")
    assert login.user(token) is None
