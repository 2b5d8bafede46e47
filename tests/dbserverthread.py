"""A dbserver serving in a thread of the test process (shared by every test directory)."""

from __future__ import annotations

import threading

from oqzmq.config import Config
from oqzmq.dbserver import DbServer

# A dbserver refuses what is stamped in its first MAX_CLOCK_SKEW seconds (2 s: the replay
# guard after a restart) and reports ready after them. Tests about what it serves start it
# with this smaller window (same host, one clock); the replay and restart tests start
# DbServer or `oqz dbserver start` with the production value.
TEST_SKEW = 0.2


class RunningServer:
    def __init__(self, config: Config, skew: float = TEST_SKEW) -> None:
        self.config = config
        self.server = DbServer(config, skew=skew)
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
