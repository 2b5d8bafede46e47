"""The oqcluster subcommands; each module exposes `register(subparsers)` (see oqcluster.cli)."""
