"""A dbserver serving in a thread of the test process (shared by every test directory)."""

from __future__ import annotations

import threading

from oqzmq.config import Config
from oqzmq.dbserver import DbServer


class RunningServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = DbServer(config)
        ready = threading.Event()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(ready.set,),
                                       daemon=True)
        self.thread.start()
        # as systemd waits for READY=1: requests signed before are refused as too early
        assert ready.wait(10), "the dbserver did not get ready"

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the dbserver thread did not stop"
