"""Who is asking the dbserver: a user name the client cannot forge with LOGNAME/USER.

Threat model (engine/README.md, "Identity"): the cluster key (``[dbserver] authkey``) is
shared by every cluster user (group ``openquake`` reads openquake.cfg), so it proves
membership of the cluster, not who someone is. On top of it, each request that acts as a
user carries a second MAC under that user's own key::

    user key  K_u = HMAC-SHA256(secret, b"oqzmq user key v1\\0" | user name)
    user MAC      = HMAC-SHA256(K_u, b"oqzmq-request-v2" | len(header) header | body)

``secret`` is the dbserver's user secret (``users.secret`` beside the database file, mode
0600, owner the service account): only the dbserver's account and root read it. The user
MAC covers the signed header of the cluster MAC (random sender id, counter, timestamp), so a
captured request cannot be re-wrapped by another key holder: the dbserver's replay check
refuses its header.

The client takes its name from the operating system (``getpwuid(getuid())``), never from the
environment, and its key from a file only that account reads (:func:`key_paths`). A process
that reads the secret (root, the service account: the webui) derives its key itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pwd
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path

from oqzmq.errors import UserError

REQUEST_VERSION = 2
KEY_FORMAT = "oqzmq-user-key-v1"
SECRET_NAME = "users.secret"
KEY_DIR = Path("/etc/openquake/users")
HOME_KEY = Path(".config/oqzmq/user.key")
_LENGTH = struct.Struct("!Q")


class UserKeyError(UserError):
    """This account has no usable user key; the message says how to get one."""


def os_user() -> str:
    """The name of the account this process runs as (real uid), from the password database:
    LOGNAME and USER are ignored, anyone can set them."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def derive_key(secret: bytes, user: str) -> bytes:
    return hmac.digest(secret, b"oqzmq user key v1\0" + user.encode(), hashlib.sha256)


def request_mac(key: bytes, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
    mac = hmac.new(key, b"oqzmq-request-v2", hashlib.sha256)
    mac.update(_LENGTH.pack(len(header)))
    mac.update(header)
    mac.update(body)
    return mac.digest()


def secret_path(db_path: Path) -> Path:
    """The dbserver's user secret: beside its database, in the service account's state dir."""
    return db_path.parent / SECRET_NAME


def read_secret(path: Path) -> bytes | None:
    """The secret, or None if this process cannot read it (not root, not the service)."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None
    return bytes.fromhex(text) if text else None


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret, creating it (0600) on first use. Created by root, it goes to the owner
    of its directory (the service account) so that the dbserver reads it."""
    existing = read_secret(path)
    if existing is not None:
        return existing
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race, or we cannot read it
        found = read_secret(path)
        if found is None:
            raise UserKeyError(f"cannot read the dbserver's user secret {path}: run the "
                               "dbserver as the account that owns it") from None
        return found
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
    if os.geteuid() == 0:
        parent = path.parent.stat()
        os.chown(path, parent.st_uid, parent.st_gid)
    return secret


def format_key(user: str, key: bytes) -> str:
    return f"{KEY_FORMAT} {user} {key.hex()}\n"


def parse_key(text: str, path: Path, user: str) -> bytes:
    words = text.split()
    if len(words) != 3 or words[0] != KEY_FORMAT:
        raise UserKeyError(f"{path} is not an oqzmq user key (expected one line "
                           f"'{KEY_FORMAT} USER HEX'): {_HOW_TO_GET.format(user=user)}")
    if words[1] != user:
        raise UserKeyError(f"{path} is the key of user {words[1]!r}, but this process runs as "
                           f"{user!r}: {_HOW_TO_GET.format(user=user)}")
    try:
        key = bytes.fromhex(words[2])
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UserKeyError(f"{path}: the key is not 64 hex digits: "
                           f"{_HOW_TO_GET.format(user=user)}")
    return key


def key_dir(config_path: Path | None) -> Path:
    """Where provisioning puts the user keys: ``users/`` beside openquake.cfg."""
    return config_path.parent / "users" if config_path else KEY_DIR


def key_paths(config_path: Path | None, user: str,
              environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a user's key is looked for, in order: $OQ_USER_KEY_FILE, <config dir>/users/
    <user>.key (provisioned, local to the host: works with homes on root-squashed NFS), then
    ~/.config/oqzmq/user.key (the home from the password database, for keys copied by hand)."""
    env = os.environ if environ is None else environ
    paths = [Path(env["OQ_USER_KEY_FILE"])] if env.get("OQ_USER_KEY_FILE") else []
    paths.append(key_dir(config_path) / f"{user}.key")
    with contextlib.suppress(KeyError):
        paths.append(Path(pwd.getpwnam(user).pw_dir) / HOME_KEY)
    return paths


_HOW_TO_GET = ("an administrator issues a key with `sudo oqz users key {user}` on the master, "
               "or adds {user} to oq_users_list in the inventory and re-runs site.yml")


def load_user_key(config_path: Path | None, db_path: Path, user: str) -> bytes:
    """The key of ``user``: from its key file, or derived when this process reads the
    dbserver's secret (root, the service account)."""
    paths = key_paths(config_path, user)
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except PermissionError:
            if not os.access(path.parent, os.X_OK):
                continue  # a directory this account cannot enter holds no key of its own
            raise UserKeyError(f"cannot read the user key {path} (it must be owned by {user}, "
                               f"mode 0600): {_HOW_TO_GET.format(user=user)}") from None
        return parse_key(text, path, user)
    secret = read_secret(secret_path(db_path))
    if secret is not None:
        return derive_key(secret, user)
    looked = ", ".join(str(path) for path in paths)
    raise UserKeyError(
        f"user {user} has no dbserver key (looked in {looked}): in a multi_user cluster every "
        f"request carries the user's own key; {_HOW_TO_GET.format(user=user)}")
