"""Node test modules (testinfra): what provisioning guarantees on each node.

One source for both runners:
- `oqcluster verify -i INV` runs them per host (`--hosts=ansible://HOST`), in parallel;
- Molecule's verifier runs them on its containers:
  `pytest --hosts=ansible://all --ansible-inventory=$MOLECULE_INVENTORY_FILE <this dir>`.
Expectations come from the same inventory (oqcluster.inventory, role defaults underneath),
never from constants in the tests. Assertions go through `expect()` so that a failure
reads "expected ... | found ... | fix ...", which `verify` shows in its report.
"""
