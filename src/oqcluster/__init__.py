"""oqcluster: provision and verify OpenQuake-style zmq compute clusters."""

__version__ = "0.1.0"
