"""Ansible's linear strategy run through Mitogen (opt-in): ``ANSIBLE_STRATEGY=mitogen_linear``.

Mitogen keeps one Python interpreter per host for the whole run, so a task no longer starts
a new interpreter on the node that unpacks and compiles Ansible's module code again (about
0.15 s of the node's CPU per task); a no-change re-run of site.yml takes about half the
time (bench/README.md). The plays, their order, check mode and idempotence are Ansible's
linear strategy's. ansible.cfg points ``strategy_plugins`` here, so the name works without
knowing where Mitogen is installed; Mitogen itself comes from requirements.lock.
"""

from __future__ import annotations

from ansible.errors import AnsibleError

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as error:
    raise AnsibleError(
        "the strategy mitogen_linear needs Mitogen for Ansible, which is not installed in "
        f"this Python ({error}): install the pinned version from requirements.lock "
        "(pip install mitogen), or unset ANSIBLE_STRATEGY to run with Ansible's own linear "
        "strategy") from error

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    """Linear, with Mitogen's connection and one persistent interpreter per host."""
