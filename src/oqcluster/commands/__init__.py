"""The oqcluster subcommands; each module exposes `add_parser(subparsers)` (see oqcluster.cli)."""
