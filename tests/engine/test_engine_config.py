"""openquake.cfg parsing, lookup order and the OQ_DISTRIBUTE override."""

from __future__ import annotations

from pathlib import Path

import pytest
from oqzmq.config import (
    Config,
    ConfigError,
    HostCores,
    is_local_host,
    load_config,
    parse_host_cores,
    parse_port_range,
)

FULL = """\
[distribution]
oq_distribute = zmq
task_retries = 3

[dbserver]
multi_user = true
file = /var/lib/openquake/db.sqlite3
listen = 10.0.0.1
host = 10.0.0.1
port = 1908
receiver_host = 10.0.0.1
receiver_ports = 1912-1920
authkey = Zx8kq2LmN0pRs5tUv7wXy9Ab3Cd5Ef7Gh9Ij1Kl3

[zworkers]
host_cores = 10.0.0.2 -1, 10.0.0.3 4

ctrl_port = 1909
max_message_mb = 256

[directory]
shared_dir = /oq_shared
custom_tmp =

[memory]
soft_mem_limit = 90
hard_mem_limit = 99
oom_retries = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "openquake.cfg"
    path.write_text(text)
    return path


def test_reads_every_key_of_the_rendered_template(tmp_path: Path) -> None:
    cfg = load_config(environ={"OQ_CONFIG_FILE": str(write(tmp_path, FULL))})
    assert cfg.distribute == "zmq"
    assert cfg.multi_user is True
    assert cfg.db_port == 1908
    assert cfg.receiver_host == "10.0.0.1"
    assert cfg.receiver_ports == range(1912, 1921)
    assert cfg.host_cores == (HostCores("10.0.0.2", -1), HostCores("10.0.0.3", 4))
    assert cfg.ctrl_port == 1909
    assert cfg.max_message_mb == 256 and cfg.max_message_bytes == 256 << 20
    assert cfg.shared_dir == "/oq_shared"
    assert cfg.custom_tmp == ""
    assert cfg.require_authkey().startswith("Zx8k")
    assert (cfg.soft_mem_limit, cfg.hard_mem_limit) == (90, 99)
    assert (cfg.task_retries, cfg.oom_retries) == (3, 1)


def test_oq_distribute_overrides_the_file(tmp_path: Path) -> None:
    env = {"OQ_CONFIG_FILE": str(write(tmp_path, FULL)), "OQ_DISTRIBUTE": "no"}
    assert load_config(environ=env).distribute == "no"


def test_bad_oq_distribute_is_named(tmp_path: Path) -> None:
    env = {"OQ_CONFIG_FILE": str(write(tmp_path, FULL)), "OQ_DISTRIBUTE": "celery"}
    with pytest.raises(ConfigError, match=r"OQ_DISTRIBUTE = 'celery'.*no, processpool, zmq"):
        load_config(environ=env)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"OQ_CONFIG_FILE=.*does not exist"):
        load_config(environ={"OQ_CONFIG_FILE": str(tmp_path / "nope.cfg")})


def test_placeholder_authkey_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("Zx8kq2LmN0pRs5tUv7wXy9Ab3Cd5Ef7Gh9Ij1Kl3", "changeme"))
    with pytest.raises(ConfigError, match=r"authkey is 'changeme'"):
        load_config(path).require_authkey()


def test_bad_port_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("ctrl_port = 1909", "ctrl_port = abc"))
    with pytest.raises(ConfigError, match=r"\[zworkers\] ctrl_port = 'abc' is not an integer"):
        load_config(path)


def test_message_cap_defaults_to_512_mb_and_must_be_positive(tmp_path: Path) -> None:
    assert Config().max_message_mb == 512
    assert load_config(write(tmp_path, FULL.replace("max_message_mb = 256\n", ""))
                       ).max_message_mb == 512
    path = write(tmp_path, FULL.replace("max_message_mb = 256", "max_message_mb = 0"))
    with pytest.raises(ConfigError, match=r"\[zworkers\] max_message_mb = '0'.*>= 1"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("10.0.0.2", "must be '<host> <cores>'"), ("10.0.0.2 0", "cores=0"), ("h x", "integer")],
)
def test_bad_host_cores(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_host_cores(text)


def test_port_range() -> None:
    assert parse_port_range("1912") == range(1912, 1913)
    with pytest.raises(ConfigError, match="FIRST-LAST"):
        parse_port_range("1920-1912")


def test_no_workers_in_zmq_mode_is_explained() -> None:
    with pytest.raises(ConfigError, match="host_cores is empty"):
        Config().require_workers()


def test_local_hosts() -> None:
    assert is_local_host("127.0.0.3")
    assert is_local_host("localhost")
    assert not is_local_host("10.0.0.2")
    assert not is_local_host("worker1")
