"""The opt-in strategy ``ANSIBLE_STRATEGY=mitogen_linear`` (plugins/strategy/mitogen_linear.py).

Run for real through ansible-playbook with the pinned ansible-core and Mitogen of
requirements.lock: a new ansible-core that Mitogen does not support fails here, not on a
user's cluster.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rolefacts import ROOT

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SHIM = ROOT / "plugins" / "strategy" / "mitogen_linear.py"
pytestmark = pytest.mark.slow  # ansible-playbook runs

# Each task appends the pid of the process that ran its command (the module's interpreter).
PLAYBOOK = """
- name: Two tasks on the control node
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: First task
      ansible.builtin.shell: echo $PPID >> {{ out }}
      changed_when: false
    - name: Second task
      ansible.builtin.shell: echo $PPID >> {{ out }}
      changed_when: false
"""


def interpreters(tmp_path: Path, strategy: str) -> list[str]:
    playbook, out = tmp_path / "two_tasks.yml", tmp_path / f"{strategy}.pids"
    playbook.write_text(PLAYBOOK)
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STRATEGY": strategy}
    command = [str(ANSIBLE_PLAYBOOK), str(playbook), "-i", "localhost,", "-e", f"out={out}",
               "-e", f"ansible_python_interpreter={sys.executable}"]
    result = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    parents = out.read_text().split()
    assert len(parents) == 2, parents
    return parents


def test_mitogen_linear_runs_every_task_in_one_persistent_interpreter(tmp_path: Path) -> None:
    # the positive twin first: Ansible's own linear strategy starts a new interpreter per task
    linear = interpreters(tmp_path, "linear")
    assert linear[0] != linear[-1], linear
    mitogen = interpreters(tmp_path, "mitogen_linear")
    assert mitogen[0] == mitogen[-1], mitogen


def test_without_mitogen_the_strategy_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.errors import AnsibleError

    for name in [n for n in sys.modules if n.startswith("ansible_mitogen")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ansible_mitogen", None)  # import fails as if absent
    spec = importlib.util.spec_from_file_location("oq_strategy_shim", SHIM)
    assert spec is not None and spec.loader is not None
    with pytest.raises(AnsibleError, match=r"requirements\.lock"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
