"""What the engine tests share besides fixtures (conftest.py): the cluster's secret, hosts,
configuration file and handle. A module of its own: ``from conftest import`` would pick
whichever test directory's conftest was imported first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
from oqzmq import launcher
from oqzmq.config import Config, HostCores
from oqzmq.poolclient import connect_pool
from oqzmq.protocol import Ping

HERE = Path(__file__).parent
AUTHKEY = "engine-tests-secret-6Zq1v8Kp3Lr0Xy7Wm2Nb"
HOSTS = ("127.0.0.2", "127.0.0.3")
MAX_MESSAGE_MB = 64  # [zworkers] max_message_mb of the test cluster

# Worker processes import the test tasks (enginetasks.py) from here.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
)


def write_config(path: Path, ctrl_port: int, receiver_ports: str, host_cores: str,
                 shared_dir: Path) -> Path:
    path.write_text(f"""\
[distribution]
oq_distribute = zmq

[dbserver]
multi_user = false
file = {shared_dir}/db.sqlite3
listen = 127.0.0.1
host = 127.0.0.1
port = 1908
receiver_host = 127.0.0.1
receiver_ports = {receiver_ports}
authkey = {AUTHKEY}

[zworkers]
host_cores = {host_cores}
ctrl_port = {ctrl_port}
max_message_mb = {MAX_MESSAGE_MB}

[directory]
shared_dir = {shared_dir}
custom_tmp =
""")
    return path


@dataclass
class Cluster:
    config: Config
    path: Path

    def log(self, host: str) -> str:
        return launcher.local_log_path(_hc(self.config, host), self.config).read_text()

    def pool_pid(self, host: str) -> int:
        context = zmq.Context()
        handle = connect_pool(context, AUTHKEY, host, f"tcp://{host}:{self.config.ctrl_port}",
                              self.config.max_message_bytes)
        try:
            reply = handle.request(Ping())
        finally:
            handle.close(linger=0)
            context.term()
        assert reply is not None, f"pool on {host} does not answer"
        return reply.pid


def _hc(config: Config, host: str) -> HostCores:
    return next(hc for hc in config.host_cores if hc.host == host)
