"""[distribution] serialize_jobs, read with the reference engine's meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
from oqzmq.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 1), ("true", 1), ("false", 0), ("3", 3), ("0", 0)]
)
def test_serialize_jobs_values(tmp_path: Path, value: str | None, expected: int) -> None:
    line = f"serialize_jobs = {value}\n" if value is not None else ""
    path = tmp_path / "openquake.cfg"
    path.write_text(f"[distribution]\noq_distribute = no\n{line}")
    assert load_config(path, environ={}).serialize_jobs == expected


def test_a_bad_serialize_jobs_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "openquake.cfg"
    path.write_text("[distribution]\nserialize_jobs = -2\n")
    with pytest.raises(ConfigError, match=r"\[distribution\] serialize_jobs = '-2'"):
        load_config(path, environ={})
