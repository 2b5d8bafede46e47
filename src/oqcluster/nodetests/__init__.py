"""Node test modules (testinfra): what provisioning guarantees on each node.

One source for both runners:
- `oqcluster verify -i INV` runs them per host (`--hosts=ansible://HOST`), in parallel;
- Molecule's verifier runs them on its containers and VMs (`verifier.directory` in
  .config/molecule/config.yml; the real-kernel scenario adds molecule/kernel/tests).
Modules named test_node_* check one node; test_cluster_* run once, from the master's
run, and look across nodes (they are on the master's line of the report).
Expectations come from the same inventory (oqcluster.inventory, role defaults underneath),
never from constants in the tests. Assertions go through `expect()` so that a failure
reads "expected ... | found ... | fix ...", which `verify` shows in its report.
"""
