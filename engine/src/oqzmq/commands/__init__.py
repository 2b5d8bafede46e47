"""Subcommands of ``oqz``: one module per command, see :mod:`oqzmq.cli`."""
