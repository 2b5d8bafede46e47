"""``oqz users key USER``, ``oqz users secret``: the per-user dbserver keys (multi_user);
``oqz users password USER``: the user's webui password (multi_user: the webui asks for a login).

Run as root (or the dbserver's account) on the master: only they read the dbserver's secret,
which every user's key derives from (see :mod:`oqzmq.identity`).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import secrets
import sys
from pathlib import Path

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
from oqzmq.webui.login import (
    MAX_PASSWORD,
    hash_password,
    passwd_path,
    read_passwords,
    valid_name,
    verify_password,
    write_passwords,
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
    password = actions.add_parser(
        "password", help="set USER's webui password (multi_user: the webui asks for a login)",
        description="Stores an scrypt hash of USER's webui password in webui.passwd beside "
        "openquake.cfg (root:openquake 0640). Without --stdin a random password is generated "
        "and written to <config dir>/users/USER.webui-password (owner USER, mode 0600), where "
        "only USER and root read it. Prints 'changed' or 'unchanged'.")
    password.add_argument("user", metavar="USER")
    password.add_argument("--stdin", action="store_true",
                          help="read the password from the first line of stdin")
    password.add_argument("--keep", action="store_true",
                          help="leave a user that already has a password unchanged")
    password.add_argument("--dry-run", action="store_true",
                          help="only say whether it would change anything")
    password.add_argument("--remove", action="store_true",
                          help="remove USER's password (ends its sessions)")
    password.set_defaults(handler=run_password)


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
    path = _key_directory(config.path) / f"{args.user}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    if os.geteuid() == 0:
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, 0o600)
    print(f"wrote {path} (owner {args.user}, mode 0600); {args.user} also needs to read "
          f"{path.parent} (group of {path.parent})")
    return 0


def run_secret(args: argparse.Namespace) -> int:
    config = load_config()
    path = secret_path(db_file(config))
    existed = path.exists()
    load_or_create_secret(path)
    print(f"{path} {'exists' if existed else 'created'}")
    return 0


def _key_directory(config_path: Path | None) -> Path:
    """The users' directory beside openquake.cfg, made root:<its group> 0750 when missing:
    every account of that group must traverse it to reach its own key (0600). Created
    0750 root:root, it hid the key of `openquake` itself (a cluster without oq_users_list)."""
    directory = key_dir(config_path)
    if not directory.is_dir():
        directory.mkdir(mode=0o750)
        group = _password_file_group(config_path)
        if os.geteuid() == 0 and group is not None:
            os.chown(directory, 0, group)
    return directory


def _password_file_group(config_path: Path | None) -> int | None:
    """The group that reads the password file: the group of openquake.cfg (openquake)."""
    if config_path is None:
        return None
    try:
        return config_path.stat().st_gid
    except OSError:
        return None


def run_password(args: argparse.Namespace) -> int:
    name = args.user
    if not valid_name(name):
        raise UserError(f"{name!r} is not a valid user name (letters, digits, . _ -)")
    config = load_config()
    path = passwd_path(config.path)
    try:
        entries = read_passwords(path)
    except PermissionError:
        raise UserError(f"cannot read {path}: run this as root on the master") from None
    if args.remove:
        changed = name in entries
        entries.pop(name, None)
        generated = None
    elif args.stdin:
        line = sys.stdin.readline().rstrip("\n")
        if not line or len(line) > MAX_PASSWORD:
            raise UserError(f"--stdin: give a password of 1 to {MAX_PASSWORD} characters "
                            "on the first line")
        changed = not verify_password(line, entries.get(name))
        if changed:
            entries[name] = hash_password(line)
        generated = None
    else:
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise UserError(f"no account named {name!r} on this host: a generated password "
                            "goes to a file only that account reads; use --stdin") from None
        changed = not (args.keep and name in entries)
        generated = secrets.token_urlsafe(18) if changed else None
        if generated:
            entries[name] = hash_password(generated)
    if args.dry_run or not changed:
        print("changed (dry run)" if changed and args.dry_run else "unchanged")
        return 0
    if generated:
        target = _key_directory(config.path) / f"{name}.webui-password"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generated + "\n")
        if os.geteuid() == 0:
            os.chown(target, account.pw_uid, account.pw_gid)
        os.chmod(target, 0o600)
    try:
        write_passwords(path, entries, _password_file_group(config.path))
    except PermissionError:
        raise UserError(f"cannot write {path}: run this as root on the master") from None
    print("changed")
    if generated:
        group = _group_name(_password_file_group(config.path))
        print(f"{name}'s webui password is in {target} (owner {name}, mode 0600); "
              f"hashes in {path} (group {group})", file=sys.stderr)
    return 0


def _group_name(gid: int | None) -> str:
    if gid is None:
        return "-"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
