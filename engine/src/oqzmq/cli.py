"""The ``oqz`` command line."""

from __future__ import annotations

import argparse

from oqzmq import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oqz", description="oq-zmq-engine command line")
    parser.add_argument("--version", action="version", version=f"oqz {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
