"""Node test modules (testinfra): what provisioning guarantees on each node and across them.

One source for both runners, and the one framework of every check that runs on the nodes:
- `oqcluster verify -i INV` runs them per host (`--hosts=ansible://HOST`), in parallel, and
  the cross-node modules in a run of their own on the master (`-m cluster`);
- Molecule's verifier runs them on its containers and VMs (`verifier.directory` in
  .config/molecule/config.yml; the real-kernel scenario adds molecule/kernel/tests).
Modules named test_node_* check one node; test_cluster_* (marker `cluster`) run once, from
the master's run, and look across nodes: ports (test_cluster_ports), the pools' answer
(test_cluster_workerpools), ssh (test_cluster_ssh), the shared dir and the NFS exports
(test_cluster_nfs), config agreement (test_cluster_config). A test that probes every worker
does it in a thread pool with verify's Nodes (cluster.per_worker: a few commands at once per
host) and reports one outcome per (node, check) through the `report` fixture: verify shows
each on its node's line, and the test fails on any failure.
Expectations come from the same inventory (oqcluster.inventory, role defaults underneath),
never from constants in the tests. Assertions go through `expect()` so that a failure
reads "expected ... | found ... | fix ...", which `verify` shows in its report.
"""
