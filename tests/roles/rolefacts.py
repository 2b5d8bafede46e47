"""Paths and per-OS-family facts the role tests share (a module of its own: ``from conftest
import`` would pick whichever test directory's conftest was imported first)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"

FACTS = {
    "RedHat": {"os_family": "RedHat", "distribution": "Rocky",
               "distribution_major_version": "9", "virtualization_role": "host",
               "virtualization_type": "kvm", "swaptotal_mb": 2048},
    "Debian": {"os_family": "Debian", "distribution": "Debian",
               "distribution_major_version": "12", "virtualization_role": "host",
               "virtualization_type": "kvm", "swaptotal_mb": 0},
    "Ubuntu": {"os_family": "Debian", "distribution": "Ubuntu",
               "distribution_major_version": "24", "virtualization_role": "host",
               "virtualization_type": "kvm", "swaptotal_mb": 0},
}
