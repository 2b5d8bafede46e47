"""Fixtures of the real-kernel checks: the `cluster`, `oq`, `node_name` and `on_master`
fixtures of the packaged node tests (oqcluster.nodetests), which run here unchanged next to
these kernel-only modules.

    pytest src/oqcluster/nodetests molecule/kernel/tests \
        --hosts=ansible://all --ansible-inventory=$MOLECULE_INVENTORY_FILE
"""

from __future__ import annotations

from oqcluster.nodetests.conftest import cluster, node_name, on_master, oq

__all__ = ["cluster", "node_name", "on_master", "oq"]
