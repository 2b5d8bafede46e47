"""`oqcluster verify`: prove a provisioned cluster works, and say exactly what is broken.

Every check that runs on the nodes, on one node or across several, is a node test
(oqcluster.nodetests, testinfra: the same modules the Molecule scenarios run). verify keeps
the orchestration and what is not on a node:
- nodes.py    runs the node tests through testinfra's ansible backend: each node's checks
              (`-m "not cluster"`) with the hosts split among at most one pytest run per
              CPU, and the cross-node checks (`-m cluster`: ports from the right side, ssh
              master -> workers, the shared dir and the exports seen by the workers, the
              same config everywhere, the pools answering) in one more run on the master,
              all in parallel; each result on the node it names;
- outside.py  the engine's ports refuse this control node when it is outside the cluster
              (the vantage point of the machine running verify);
- smoke.py    the engine's demo calculation in zmq mode, with its tasks per worker
              (smoke_openquake.py: the real engine's);
- runner.py   reachability first, then all of the above; --read-only, --no-smoke;
- report.py   the table, --json and --junit.
Every check yields `CheckResult`s (results.py) that say what was expected, what was found
and what fixes it; remote.py's Node runs commands on a node, a few at a time per host.
"""
