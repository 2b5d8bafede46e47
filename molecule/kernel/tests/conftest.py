"""Fixtures of the real-kernel checks: the same `cluster`, `oq`, `node_name` and `on_master`
fixtures as the container scenario's tests (oqcluster.nodetests), so molecule/default/tests
run here unchanged next to these kernel-only modules.

    pytest molecule/default/tests molecule/kernel/tests \
        --hosts=ansible://all --ansible-inventory=$MOLECULE_INVENTORY_FILE
"""

from __future__ import annotations

from oqcluster.nodetests.conftest import cluster, node_name, on_master, oq

__all__ = ["cluster", "node_name", "on_master", "oq"]
