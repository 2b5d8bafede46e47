"""Where calculations keep their data: ``<shared_dir>/<user>/oqdata/calc_<id>.hdf5``.

Without ``[directory] shared_dir`` the directory is ``~/oqdata`` (as in the real engine).
Calculation ids given by the dbserver are used as they are; :func:`new_calculation` picks the
next free id itself when there is none, creating the file exclusively so that two concurrent
runs never share one.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

import h5py

from oqzmq.config import Config
from oqzmq.errors import UserError

_CALC_FILE = re.compile(r"calc_(\d+)\.hdf5$")


def oqdata_dir(config: Config, user: str | None = None) -> Path:
    """The user's oqdata directory (not created)."""
    if config.shared_dir:
        return Path(config.shared_dir) / (user or getpass.getuser()) / "oqdata"
    return Path.home() / "oqdata"


def calc_path(config: Config, calc_id: int) -> Path:
    return oqdata_dir(config) / f"calc_{calc_id}.hdf5"


def existing_ids(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _CALC_FILE.match(p.name)))


def new_calculation(config: Config, calc_id: int | None = None) -> tuple[int, Path]:
    """Create an empty datastore (HDF5 file) and return its id and path."""
    directory = oqdata_dir(config)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the datastore directory {directory}: {exc.strerror}; "
            "check [directory] shared_dir in openquake.cfg and that it is writable by you"
        ) from exc
    candidate = calc_id if calc_id is not None else max(existing_ids(directory), default=0) + 1
    while True:
        path = directory / f"calc_{candidate}.hdf5"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
        except FileExistsError:
            if calc_id is not None:
                raise UserError(f"datastore {path} already exists") from None
            candidate += 1
            continue
        with h5py.File(path, "w") as h5:
            h5.attrs["calc_id"] = candidate
        return candidate, path


def find_calculation(config: Config, calc_id: int | None) -> Path:
    """The datastore of ``calc_id`` (None or -1 = the latest one); a UserError if missing."""
    directory = oqdata_dir(config)
    if calc_id is None or calc_id < 0:
        ids = existing_ids(directory)
        if not ids:
            raise UserError(f"no calculations in {directory}: run one with `oqz run demo`")
        calc_id = ids[-1]
    path = directory / f"calc_{calc_id}.hdf5"
    if not path.is_file():
        raise UserError(f"no datastore for calculation {calc_id}: {path} does not exist")
    return path
