"""The real engine's webui asks for a login (LOCKDOWN): checked from a worker.

The listener's positive twin is its login page (200, a password form); the refusal is the
calculation list, which an anonymous client does not get (403, or a redirect to the login).
The firewall admits 8800 from cluster addresses only, so the requests go from a worker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from oqcluster.nodetests.cluster import Cluster
from oqcluster.nodetests.expect import expect

# Runs on a worker: GET each path without following redirects; prints {path: [status, location]}.
HTTP_PROBE = """
import json, sys, urllib.error, urllib.request
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(NoRedirect)
answers = {}
for path in sys.argv[2:]:
    try:
        with opener.open(sys.argv[1] + path, timeout=30) as reply:
            body = reply.read(200000).decode("utf-8", "replace")
            answers[path] = [reply.status, "", "password" in body]
    except urllib.error.HTTPError as error:
        answers[path] = [error.code, error.headers.get("Location", ""), False]
print(json.dumps(answers))
"""
LOGIN, CALC_LIST = "/accounts/login/", "/v1/calc/list"
FIX = "re-run ansible-playbook site.yml -i INV --tags services; journalctl -u openquake-webui"


@pytest.mark.usefixtures("master_only")
def test_real_engine_webui_requires_a_login(
    oq: dict[str, Any], cluster: Cluster, node_name: str
) -> None:
    if oq["oq_engine_flavor"] != "openquake" or not oq["oq_webui_enabled"]:
        pytest.skip("only for the real engine's webui (oq_engine_flavor openquake)")
    if not cluster.remote_workers():
        pytest.skip("needs a worker that is not the master (the firewall admits the cluster)")
    worker = cluster.node(cluster.remote_workers()[0])
    base = f"http://{cluster.address(node_name)}:{oq['oq_webui_port']}"
    out = worker.run("python3 -c %s %s %s %s", HTTP_PROBE, base, LOGIN, CALC_LIST)
    expect(out.rc == 0, f"{base} answers a cluster node", (out.stdout + out.stderr)[-300:], FIX)
    answers = json.loads(out.stdout)
    status, _, form = answers[LOGIN]
    expect(status == 200 and form, f"{base}{LOGIN}: 200 with a password form",
           f"{status}, form: {form}", FIX)
    status, location, _ = answers[CALC_LIST]
    refused = status in (401, 403) or (status in (301, 302) and LOGIN in location)
    expect(refused, f"{base}{CALC_LIST} without a login: 403 or a redirect to {LOGIN}",
           f"{status} {location}".strip(),
           "the webui must run with LOCKDOWN on (/etc/openquake/webui/local_settings.py): "
           + FIX)
