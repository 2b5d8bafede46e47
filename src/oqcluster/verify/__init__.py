"""`oqcluster verify`: prove a provisioned cluster works, and say exactly what is broken.

- nodes.py    the packaged node test modules (oqcluster.nodetests, the same ones the Molecule
              scenario runs) through testinfra's ansible backend: the hosts split among
              at most one pytest run per CPU, the runs in parallel;
- cluster.py  checks that need several nodes: ports from the right side, ssh master ->
              workers, the shared dir seen by the workers, the same config everywhere, ...;
- smoke.py    the engine's demo calculation in zmq mode, with its tasks per worker;
- report.py   the table, --json and --junit.
Every check yields `CheckResult`s (results.py) that say what was expected, what was found
and what fixes it.
"""
