"""oqzmq: task distribution over zmq for OpenQuake-style clusters."""

__version__ = "0.1.0"
