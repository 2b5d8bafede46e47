"""A dbserver serving in a thread of the test process (shared by every test directory)."""

from __future__ import annotations

import threading

from oqzmq.config import Config
from oqzmq.dbserver import DbServer


class RunningServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = DbServer(config)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the dbserver thread did not stop"
