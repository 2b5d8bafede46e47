"""The webui's JSON API and pages, served by uvicorn on a free port from a real dbserver."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest


def get(url: str) -> tuple[int, Any, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        body, status, headers = error.read().decode(), error.code, dict(error.headers)
    is_json = headers.get("content-type", "").startswith("application/json")
    return status, json.loads(body) if is_json else body, headers


def test_the_list_api_gives_newest_first_with_the_total(webui) -> None:
    web, ids = webui
    status, calcs, headers = get(f"{web.url}/v1/calc/list")
    assert status == 200 and headers["x-total-count"] == "3"
    assert [c["id"] for c in calcs] == [ids["running"], ids["failed"], ids["complete"]]
    assert calcs[0]["is_running"] and not calcs[2]["is_running"]
    assert calcs[2]["start_time"].endswith("+00:00") and calcs[2]["duration"] >= 0
    _, limited, _ = get(f"{web.url}/v1/calc/list?limit=1&offset=1")
    assert [c["id"] for c in limited] == [ids["failed"]]


def test_status_log_traceback_and_tasks_of_one_calculation(webui) -> None:
    web, ids = webui
    calc = f"{web.url}/v1/calc/{ids['complete']}"
    assert get(f"{calc}/status")[1]["status"] == "complete"
    assert [r["message"] for r in get(f"{calc}/log")[1]] == ["started"]
    assert get(f"{calc}/log?after_id=1")[1] == []
    assert get(f"{calc}/log/0:")[1] == [["2001-09-09 01:46:40", "INFO", "m:1", "started"]]
    assert get(f"{calc}/log/1:")[1] == []
    assert get(f"{calc}/log/a:b")[0] == 400
    assert len(get(f"{calc}/tasks")[1]) == 6
    assert get(f"{calc}/traceback")[1] == []
    traceback = get(f"{web.url}/v1/calc/{ids['failed']}/traceback")[1]
    assert traceback == ["Traceback", "ValueError: boom"]


def test_workers_status_comes_from_the_workerpools(webui) -> None:
    web, _ = webui
    assert get(f"{web.url}/v1/workers/status")[1] == [["10.0.0.2", 1, 4]]


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/v1/calc/999/status", 404, "there is no calculation 999"),
        ("/v1/calc/list?limit=lots", 400, "limit must be an integer"),
        ("/v1/calc/list?limit=-1", 400, "limit must be between 0 and"),
    ],
)
def test_api_errors_are_json_with_a_reason(webui, path: str, code: int, message: str) -> None:
    web, _ = webui
    status, body, _ = get(web.url + path)
    assert status == code and message in body["error"]


def test_every_response_carries_the_security_headers(webui) -> None:
    web, _ = webui
    for path in ("/", "/v1/calc/list", "/static/app.js", "/v1/calc/999/status"):
        headers = get(web.url + path)[2]
        assert headers["content-security-policy"].startswith("default-src 'self'"), path
        assert headers["x-content-type-options"] == "nosniff", path


def test_an_unknown_calculation_page_is_a_readable_404(webui) -> None:
    web, _ = webui
    status, body, _ = get(f"{web.url}/calc/999")
    assert status == 404 and "there is no calculation 999" in body


def test_a_stopped_dbserver_is_a_503_that_says_how_to_start_it(webui, dbserver) -> None:
    web, _ = webui
    dbserver.stop()
    status, body, _ = get(f"{web.url}/v1/calc/list")
    assert status == 503 and "oqz dbserver start" in body["error"]


def test_the_list_page_shows_every_calculation_escaped(webui) -> None:
    web, ids = webui
    status, page, _ = get(f"{web.url}/")
    assert status == 200
    assert f'<a href="calc/{ids["failed"]}">' in page  # relative: works behind a proxy prefix
    assert "hazard &lt;demo&gt;" in page and "<demo>" not in page
    assert page.count('class="status ') == 3


def test_the_calc_page_has_log_traceback_and_task_chart(webui) -> None:
    web, ids = webui
    _, done, _ = get(f"{web.url}/calc/{ids['complete']}")
    assert done.count('<rect class="bar"') == 6 and "10.0.0.3" in done
    assert "2001-09-09 01:46:40 INFO m:1 started" in done
    _, failed, _ = get(f"{web.url}/calc/{ids['failed']}")
    assert 'class="traceback"' in failed and "ValueError: boom" in failed
    assert "No task timings recorded." in failed


def test_a_huge_task_table_is_cut_on_the_page_but_not_in_the_api(
    webui, config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oqzmq.dbserver import DbClient
    from oqzmq.webui import app

    monkeypatch.setattr(app, "MAX_TASK_ROWS", 40)
    web, ids = webui
    tasks = [{"task_no": i, "name": "t", "host": "h", "duration": 1.0, "nbytes": 0,
              "memory_mb": 0.0} for i in range(100)]
    with DbClient(config) as client:
        client.call("add_tasks", calc_id=ids["running"], tasks=tasks)
    _, page, _ = get(f"{web.url}/calc/{ids['running']}")
    assert "100 tasks: operation" in page and "(the first 40 here; all in" in page
    assert page.count("<tr><td class=\"num\">") == 40
    assert '<details class="tasks">' in page  # folded
    assert len(get(f"{web.url}/v1/calc/{ids['running']}/tasks")[1]) == 100

