"""``oqz users key USER`` and ``oqz users secret``: the per-user dbserver keys (multi_user).

Run as root (or the dbserver's account) on the master: only they read the dbserver's secret,
which every user's key derives from (see :mod:`oqzmq.identity`).
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from oqzmq.config import load_config
from oqzmq.dbserver import db_file
from oqzmq.errors import UserError
from oqzmq.identity import (
    derive_key,
    format_key,
    key_dir,
    load_or_create_secret,
    read_secret,
    secret_path,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "users", help="issue the per-user keys of the dbserver (root, on the master)",
        description="In a multi_user cluster each request to the dbserver carries the user's "
        "own key, derived from the dbserver's secret. These commands need that secret: run "
        "them as root (sudo) on the master.")
    actions = parser.add_subparsers(dest="users_action", metavar="ACTION", required=True)
    key = actions.add_parser("key", help="write USER's key file (owner USER, mode 0600)")
    key.add_argument("user", metavar="USER")
    key.add_argument("--stdout", action="store_true",
                     help="print the key file's content instead of writing it")
    key.set_defaults(handler=run_key)
    secret = actions.add_parser("secret", help="create the dbserver's secret if it is missing")
    secret.set_defaults(handler=run_secret)


def _secret() -> bytes:
    config = load_config()
    path = secret_path(db_file(config))
    secret = read_secret(path)
    if secret is None:
        raise UserError(
            f"cannot read the dbserver's secret {path} "
            f"({'no permission' if path.exists() else 'missing'}): "
            "run this as root on the master, after the dbserver started once "
            "(or `oqz users secret` creates it)")
    return secret


def run_key(args: argparse.Namespace) -> int:
    try:
        account = pwd.getpwnam(args.user)
    except KeyError:
        raise UserError(f"no account named {args.user!r} on this host: create it first "
                        "(or list it in oq_users_list with create: true)") from None
    content = format_key(args.user, derive_key(_secret(), args.user))
    if args.stdout:
        sys.stdout.write(content)
        return 0
    config = load_config()
    directory = key_dir(config.path)
    directory.mkdir(mode=0o750, exist_ok=True)
    path = directory / f"{args.user}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    if os.geteuid() == 0:
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, 0o600)
    print(f"wrote {path} (owner {args.user}, mode 0600); {args.user} also needs to read "
          f"{directory} (group of {directory})")
    return 0


def run_secret(args: argparse.Namespace) -> int:
    config = load_config()
    path = secret_path(db_file(config))
    existed = path.exists()
    load_or_create_secret(path)
    print(f"{path} {'exists' if existed else 'created'}")
    return 0
