"""The inventory rules on plain data: each rule fires on its defect and only on it."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.rules import GENERATED, ClusterData, HostSettings, Problem, validate

GOOD: dict[str, Any] = {
    "oq_user": "openquake", "oq_group": "openquake", "oq_uid": 1909, "oq_gid": 1909,
    "oq_home": "/home/openquake", "oq_shared_dir": "/oq_shared",
    "oq_install_dir": "/opt/openquake", "oq_venv_dir": "/opt/openquake/venv",
    "oq_config_dir": "/etc/openquake", "oq_state_dir": "/var/lib/openquake",
    "oq_custom_tmp": "", "oq_distribute": "zmq", "oq_multi_user": True,
    "oq_dbserver_port": 1908, "oq_dbserver_file": "/var/lib/openquake/db.sqlite3",
    "oq_receiver_port_first": 1912, "oq_receiver_port_last": 1920, "oq_ctrl_port": 1909,
    "oq_webui_enabled": True, "oq_webui_port": 8800, "oq_default_cores": -1,
    "oq_authkey": GENERATED, "oq_soft_mem_limit": 90, "oq_hard_mem_limit": 99,
    "oq_memory_high_percent": 90, "oq_memory_max_percent": 95, "oq_swap_off": True,
    "oq_engine_flavor": "oqzmq", "oq_openquake_version": "3.26.2",
    "oq_max_message_mb": 512,
}
ADDRESSES = {"m": "192.0.2.1", "w1": "192.0.2.2", "w2": "192.0.2.3"}


def cluster(
    settings: dict[str, Any] | None = None,
    per_host: dict[str, dict[str, Any]] | None = None,
    masters: tuple[str, ...] = ("m",),
    workers: tuple[str, ...] = ("w1", "w2"),
) -> ClusterData:
    hosts = {}
    for name in dict.fromkeys((*masters, *workers)):
        values = {**GOOD, "oq_address": ADDRESSES.get(name, name), **(settings or {})}
        values.update((per_host or {}).get(name, {}))
        hosts[name] = HostSettings(name=name, values=values)
    return ClusterData(masters=masters, workers=workers, hosts=hosts)


def never_resolves(name: str) -> bool:
    return False


def problems_of(data: ClusterData) -> list[tuple[str, str]]:
    return [(p.host, p.variable) for p in validate(data, resolve=never_resolves)]


def test_a_good_cluster_has_no_problem() -> None:
    assert validate(cluster(), resolve=never_resolves) == []


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"oq_dbserver_port": 1909}, "oq_dbserver_port"),  # equal to ctrl port
        ({"oq_webui_port": 1908}, "oq_dbserver_port"),
        ({"oq_webui_port": 1915}, "oq_receiver_port_first"),
        ({"oq_receiver_port_first": 1920, "oq_receiver_port_last": 1912},
         "oq_receiver_port_first"),
        ({"oq_ctrl_port": 80}, "oq_ctrl_port"),
        ({"oq_ctrl_port": 70000}, "oq_ctrl_port"),
        ({"oq_ctrl_port": True}, "oq_ctrl_port"),
        ({"oq_venv_dir": "/usr/local/venv"}, "oq_venv_dir"),
        ({"oq_venv_dir": "/opt/openquake"}, "oq_venv_dir"),
        ({"oq_install_dir": "/oq_shared/opt", "oq_venv_dir": "/oq_shared/opt/venv"},
         "oq_shared_dir"),
        ({"oq_config_dir": "etc/openquake"}, "oq_config_dir"),
        ({"oq_dbserver_file": "db.sqlite3"}, "oq_dbserver_file"),
        ({"oq_custom_tmp": "tmp"}, "oq_custom_tmp"),
        ({"oq_home": "/oq_shared/home"}, "oq_home"),
        ({"oq_uid": 65534}, "oq_uid"),
        ({"oq_gid": 0}, "oq_gid"),
        ({"oq_soft_mem_limit": 99, "oq_hard_mem_limit": 90}, "oq_soft_mem_limit"),
        ({"oq_hard_mem_limit": 101}, "oq_soft_mem_limit"),
        ({"oq_soft_mem_limit": 0}, "oq_soft_mem_limit"),
        ({"oq_task_retries": -1}, "oq_task_retries"),
        ({"oq_oom_retries": "many"}, "oq_oom_retries"),
        ({"oq_memory_high_percent": 96}, "oq_memory_high_percent"),
        ({"oq_max_message_mb": 0}, "oq_max_message_mb"),
        ({"oq_max_message_mb": "512MB"}, "oq_max_message_mb"),
        ({"oq_distribute": "celery"}, "oq_distribute"),
        ({"oq_multi_user": "yes"}, "oq_multi_user"),
        ({"oq_default_cores": 0}, "oq_default_cores"),
        ({"oq_authkey": "changeme"}, "oq_authkey"),
        ({"oq_authkey": "short-secret"}, "oq_authkey"),
        ({"oq_user": "Open Quake"}, "oq_user"),
        ({"oq_users_list": "alice"}, "oq_users_list"),
        ({"oq_users_list": ["alice"]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "Alice Smith"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice"}, {"name": "alice"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "openquake"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "root"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "create": "yes"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "uid": 2001}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "create": True, "uid": 65534}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "groups": ["sudo"]}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "webui_password": "short"}]}, "oq_users_list"),
        ({"oq_users_list": [{"name": "alice", "webui_password": "two\nlines!"}]},
         "oq_users_list"),
        ({"oq_admin_users": "openquake"}, "oq_admin_users"),
        ({"oq_admin_users": ["Open Quake"]}, "oq_admin_users"),
    ],
)
def test_each_cluster_setting_rule_reports_once_for_all_hosts(
    settings: dict[str, Any], variable: str
) -> None:
    assert problems_of(cluster(settings)) == [("all hosts", variable)]


def test_cluster_users_and_the_manuals_shared_dir_home_are_accepted() -> None:
    users = [{"name": "alice", "webui_password": "correct horse"},
             {"name": "bob", "create": True, "uid": 2001}]
    data = cluster({"oq_users_list": users, "oq_admin_users": ["openquake", "carol"],
                    "oq_shared_dir": "/home", "oq_home": "/var/lib/openquake-home"})

    assert problems_of(data) == []


def test_a_disabled_webui_may_share_no_port_rule() -> None:
    data = cluster({"oq_webui_enabled": False, "oq_webui_port": 1908})

    assert problems_of(data) == []


def test_a_setting_overridden_on_one_host_must_agree() -> None:
    data = cluster(per_host={"w2": {"oq_shared_dir": "/data"}})

    assert problems_of(data) == [("m, w1, w2", "oq_shared_dir")]


def test_oq_cores_set_for_all_hosts_is_fine_on_a_master_that_does_not_compute() -> None:
    data = cluster({"oq_cores": 4})

    assert problems_of(data) == []


def test_a_master_only_host_may_not_share_a_workers_address() -> None:
    data = cluster(per_host={"w2": {"oq_address": ADDRESSES["m"]}})

    assert problems_of(data) == [("m, w2", "oq_address")]


def test_a_master_that_also_computes_is_not_a_duplicate_address() -> None:
    assert problems_of(cluster(workers=("m", "w1"))) == []


def test_no_master_and_no_workers_are_both_reported() -> None:
    data = cluster(masters=(), workers=())

    assert problems_of(data) == [("(inventory)", "group master"), ("(inventory)", "group workers")]


def test_names_resolve_through_the_resolver() -> None:
    data = cluster(per_host={"w1": {"oq_address": "w1.example"}})

    assert validate(data, resolve=lambda name: name == "w1.example") == []
    assert problems_of(data) == [("w1", "oq_address")]


def test_templating_and_type_errors_name_host_and_variable() -> None:
    data = cluster()
    broken = HostSettings(
        name="w1", values={**data.hosts["w1"].values},
        errors={"oq_authkey": "'vault_key' is undefined"}, type_errors={"oq_uid": "not an int"},
    )
    data = ClusterData(data.masters, data.workers, {**data.hosts, "w1": broken})

    problems = validate(data, resolve=never_resolves)

    assert [(p.host, p.variable) for p in problems] == [("w1", "oq_authkey"), ("w1", "oq_uid")]
    assert "cannot be evaluated: 'vault_key' is undefined" in problems[0].message


def test_a_problem_reads_as_host_variable_message_and_fix() -> None:
    problem = Problem("w1", "oq_cores", "must be -1", "set oq_cores: -1")

    assert str(problem) == "w1: oq_cores: must be -1. Fix: set oq_cores: -1"


def test_the_real_engine_needs_a_pinned_version() -> None:
    good = {"oq_engine_flavor": "openquake", "oq_openquake_version": "3.26.2"}
    assert validate(cluster(good), never_resolves) == []
    problems = validate(cluster({**good, "oq_openquake_version": "3.99.0"}), never_resolves)
    assert [(p.variable, p.host) for p in problems] == [("oq_openquake_version", "all hosts")]
    assert "3.26.2" in problems[0].fix
    # the bundled engine ignores the version
    bundled = {"oq_engine_flavor": "oqzmq", "oq_openquake_version": "3.99.0"}
    assert validate(cluster(bundled), never_resolves) == []


def test_the_flavor_is_cluster_wide() -> None:
    problems = validate(cluster(per_host={"w2": {"oq_engine_flavor": "openquake"}}),
                        never_resolves)
    assert [p.variable for p in problems] == ["oq_engine_flavor"]


def test_the_engine_owns_the_shared_dir_or_its_own_directory_in_a_shared_home() -> None:
    from oqcluster.rules import shared_engine_dir

    assert shared_engine_dir("/oq_shared", "openquake") == "/oq_shared"
    assert shared_engine_dir("/home", "openquake") == "/home/openquake"
    assert shared_engine_dir("/home/", "openquake") == "/home/openquake"
