"""The webui's login (multi_user): provisioned passwords and signed session cookies.

Why not PAM: the webui runs as the service account (``openquake``), which cannot check other
accounts' Unix passwords without reading /etc/shadow. The passwords are the webui's own,
provisioned by root (``oqz users password USER``, or the ``oq_users`` role), stored as scrypt
hashes in one file beside openquake.cfg::

    /etc/openquake/webui.passwd     root:openquake 0640, one line per user:
    NAME:scrypt:N:R:P:SALT_HEX:HASH_HEX

A login yields a session cookie ``oqz_session`` = ``NAME|EXPIRY|BINDING|MAC``: the MAC is
HMAC-SHA256 under a key derived from the dbserver's user secret (which the webui, as the
service account, already reads), BINDING a MAC of the user's current password line, so a
changed or removed password ends the user's sessions at once. HttpOnly, SameSite=Strict,
expires after :data:`SESSION_SECONDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("oqzmq.webui")
PASSWD_NAME = "webui.passwd"
COOKIE = "oqz_session"
SESSION_SECONDS = 8 * 3600
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_PASSWORD = 1024
# verified when the user is unknown, so that the time of a refusal does not tell which
# user names exist
_DUMMY = ("scrypt", SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * 16, b"\0" * 32)


def passwd_path(config_path: Path | None) -> Path:
    """The password file: beside openquake.cfg."""
    return (config_path.parent if config_path else Path("/etc/openquake")) / PASSWD_NAME


def valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name)


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{salt.hex()}:{digest.hex()}"


def _parse_hash(text: str) -> tuple[str, int, int, int, bytes, bytes] | None:
    parts = text.split(":")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        return ("scrypt", n, r, p, bytes.fromhex(parts[4]), bytes.fromhex(parts[5]))
    except ValueError:
        return None


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches the stored hash; as slow when there is none."""
    parsed = _parse_hash(stored) if stored else None
    _, n, r, p, salt, expected = parsed or _DUMMY
    if not 1 < n <= 2**20 or r > 64 or p > 16:
        n, r, p = SCRYPT_N, SCRYPT_R, SCRYPT_P
    digest = hashlib.scrypt(password.encode()[:MAX_PASSWORD], salt=salt, n=n, r=r, p=p,
                            maxmem=2**28, dklen=len(expected) or 32)
    return hmac.compare_digest(digest, expected) and parsed is not None


def read_passwords(path: Path) -> dict[str, str]:
    """NAME -> hash, from the password file ({} when it is missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    entries = {}
    for line in text.splitlines():
        name, sep, stored = line.strip().partition(":")
        if sep and valid_name(name) and not name.startswith("#"):
            entries[name] = stored
    return entries


def write_passwords(path: Path, entries: dict[str, str], group_id: int | None) -> None:
    """Replace the password file atomically (mode 0640, group ``group_id`` when root)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("# oqz webui passwords: set with `oqz users password USER`\n")
            for name in sorted(entries):
                handle.write(f"{name}:{entries[name]}\n")
        if os.geteuid() == 0 and group_id is not None:
            os.chown(tmp, 0, group_id)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def session_key(user_secret: bytes) -> bytes:
    return hmac.digest(user_secret, b"oqzmq webui session v1", hashlib.sha256)


@dataclass
class Login:
    """Checks passwords and issues/verifies the session cookies."""

    passwd: Path
    key: bytes
    seconds: int = SESSION_SECONDS

    def _passwords(self) -> dict[str, str]:
        """The password file; {} (nobody logs in) when this process may not read it."""
        try:
            return read_passwords(self.passwd)
        except OSError as exc:  # not permitted, not a file...
            log.error("cannot read %s (%s): nobody can log in (it must be root:openquake 0640; "
                      "`oqz users password USER` as root writes it so)", self.passwd,
                      exc.strerror)
            return {}

    def check(self, name: str, password: str) -> bool:
        stored = self._passwords().get(name) if valid_name(name) else None
        return verify_password(password, stored)

    def _binding(self, name: str) -> str | None:
        stored = self._passwords().get(name)
        if stored is None:
            return None
        return hmac.digest(self.key, b"binding\0" + stored.encode(), hashlib.sha256)[:8].hex()

    def _mac(self, body: str) -> str:
        return hmac.digest(self.key, b"session\0" + body.encode(), hashlib.sha256).hex()

    def issue(self, name: str, now: float | None = None) -> str:
        expiry = int((now or time.time()) + self.seconds)
        body = f"{name}|{expiry}|{self._binding(name) or ''}"
        return f"{body}|{self._mac(body)}"

    def user(self, cookie: str | None, now: float | None = None) -> str | None:
        """The user of a valid, unexpired session cookie, else None."""
        if not cookie or cookie.count("|") != 3:
            return None
        body, _, mac = cookie.rpartition("|")
        if not hmac.compare_digest(self._mac(body), mac):
            return None
        name, expiry, binding = body.split("|")
        try:
            if int(expiry) < (now or time.time()):
                return None
        except ValueError:
            return None
        current = self._binding(name)
        if current is None or not hmac.compare_digest(current, binding):
            return None
        return name
