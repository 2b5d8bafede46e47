"""The webui asks for a login: the real engine's (LOCKDOWN, checked from a worker) and the
bundled one with multi_user (checked on the master, with the positive twin: a user's login
and its own calculations only).

The listener's positive twin is its login page (200, a password form); the refusal is the
calculation list, which an anonymous client does not get (403, or a redirect to the login).
The firewall admits 8800 from cluster addresses only, so the requests go from a worker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from oqcluster.nodetests.cluster import Cluster
from oqcluster.nodetests.expect import as_root, expect

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


# Runs on the master as root: the API without a session, a wrong password, then the login
# as USER with its generated password (read here, never on a command line) and the list.
LOGIN_PROBE = """
import http.cookiejar, json, sys, urllib.error, urllib.parse, urllib.request
base, user, password_file = sys.argv[1:4]
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(jar))
def call(path, form=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with opener.open(base + path, data=data, timeout=30) as reply:
            body = reply.read(2000000).decode("utf-8", "replace")
            return reply.status, body, reply.headers.get("Location", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(2000).decode("utf-8", "replace"), \
            error.headers.get("Location", "")
with open(password_file) as handle:
    password = handle.read().strip()
answers = {"anonymous": call("/v1/calc/list")[0]}
answers["wrong"] = call("/accounts/login/", {"username": user, "password": password + "x"})[0]
status, _, location = call("/accounts/login/", {"username": user, "password": password})
answers["login"] = [status, location, [c.name for c in jar]]
status, body, _ = call("/v1/calc/list?limit=10000")
answers["list"] = [status, json.loads(body) if status == 200 else body[:300]]
print(json.dumps(answers))
"""
LOGIN_FIX = ("re-run ansible-playbook site.yml -i INV (roles oq_services and oq_users: the "
             "bundled webui asks for a login when oq_multi_user is on)")


@pytest.mark.writes  # a probe calculation in the dbserver, as the user and as openquake
@pytest.mark.usefixtures("master_only")
def test_bundled_webui_requires_a_login_and_shows_a_user_only_their_calculations(
    host: Any, oq: dict[str, Any], cluster: Cluster, node_name: str
) -> None:
    from oqcluster.nodetests.test_node_users import Oqz  # the identity probe's helpers

    if oq["oq_engine_flavor"] != "oqzmq" or not oq["oq_webui_enabled"]:
        pytest.skip("only for the bundled engine's webui")
    if not oq["oq_multi_user"]:
        pytest.skip("the bundled webui asks for a login only with oq_multi_user")
    users = [str(item["name"]) for item in oq.get("oq_users_list") or []]
    if not users:
        pytest.skip("oq_users_list is empty: no cluster user to log in as")
    user, admin = users[0], oq["oq_user"]
    password_file = f"{oq['oq_config_dir']}/users/{user}.webui-password"
    with as_root(host):
        passwd = host.file(f"{oq['oq_config_dir']}/webui.passwd")
        found = f"{passwd.user}:{passwd.group} {passwd.mode:o}" if passwd.is_file else "missing"
        mine = host.file(password_file)
        own = f"{mine.user} {mine.mode:o}" if mine.is_file else "missing"
    expect(found == f"root:{oq['oq_group']} 640", f"{passwd.path} root:{oq['oq_group']} 0640",
           found, LOGIN_FIX)
    expect(own == f"{user} 600", f"{password_file} owner {user}, mode 0600", own, LOGIN_FIX)
    oqz = Oqz(host, oq)
    theirs, ours = oqz.probe_calc(admin), oqz.probe_calc(user)
    base = f"http://{cluster.address(node_name)}:{oq['oq_webui_port']}"
    with as_root(host):
        out = host.run("python3 -c %s %s %s %s", LOGIN_PROBE, base, user, password_file)
    expect(out.rc == 0, f"{base} answers on the master", (out.stdout + out.stderr)[-300:],
           LOGIN_FIX)
    answers = json.loads(out.stdout)
    expect(answers["anonymous"] == 401, f"{base}/v1/calc/list without a login: 401",
           str(answers["anonymous"]), LOGIN_FIX)
    expect(answers["wrong"] == 401, f"a wrong password for {user}: 401",
           str(answers["wrong"]), LOGIN_FIX)
    status, location, cookies = answers["login"]
    expect(status == 303 and "oqz_session" in cookies,
           f"{user} logs in with its password (303 and a session cookie)",
           f"{status} {location} cookies {cookies}", LOGIN_FIX)
    status, calcs = answers["list"]
    expect(status == 200, f"the list as {user}: 200", f"{status} {calcs}", LOGIN_FIX)
    ids, owners = {c["id"] for c in calcs}, {c["owner"] for c in calcs}
    expect(ours in ids and theirs not in ids and owners == {user},
           f"as {user}: its calculation {ours}, not {admin}'s {theirs}, only its own",
           f"ids {sorted(ids)[-10:]}, owners {sorted(owners)}",
           "the webui must ask the dbserver as the user who logged in: " + LOGIN_FIX)
