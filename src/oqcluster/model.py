"""The cluster model: every fact derived from the inventory, computed once, here.

The inventory says what the cluster is (groups, each host's evaluated oq_* variables:
`ClusterData`, loaded by oqcluster.inventory). This module derives the rest, and nothing
else derives it again:

- each node's cluster address (`node_address`: `oq_address`, else `ansible_host`, else the
  inventory name), the master's, the workers', the cluster's;
- `[zworkers] host_cores` of openquake.cfg;
- the firewall allow-list of each node (which port admits which addresses) and the NFS
  export's clients.

The preflight (plugins/action/oq_preflight.py) publishes `ClusterModel.as_fact()` as the
fact `oq_cluster` on every host of the run; roles/oq/vars/main.yml, the roles and
templates/openquake.cfg.j2 read it. `oqcluster render/check/verify` get the same dict from
`Inventory.model()`. Plain data only: no Ansible import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MASTER_GROUP = "master"
WORKERS_GROUP = "workers"
FACT = "oq_cluster"  # the name the preflight publishes the model under
NFS_PORT = 2049  # NFSv4 only: no portmapper, no mountd port
# Where a host's cluster address comes from, first set wins; else its inventory name.
ADDRESS_VARIABLES = ("oq_address", "ansible_host")


@dataclass(frozen=True)
class HostSettings:
    """A host's evaluated variables, the ones whose templating failed, and type errors.

    `type_errors` are violations of the role's argument specs (type, choices); those
    variables are left out of `values`, so the rules do not report them twice.
    """

    name: str
    values: Mapping[str, Any]
    errors: Mapping[str, str] = field(default_factory=dict)
    type_errors: Mapping[str, str] = field(default_factory=dict)

    def address_source(self) -> str | None:
        """The variable the address comes from (oq_address, ansible_host), or None."""
        return address_source(self.values)

    def address(self) -> str:
        """This host's cluster address (openquake.cfg, firewall, NFS, known_hosts)."""
        return node_address(self.name, self.values)


@dataclass(frozen=True)
class ClusterData:
    """What the model and the rules start from: group membership and each host's settings."""

    masters: tuple[str, ...]
    workers: tuple[str, ...]
    hosts: Mapping[str, HostSettings]

    def cluster_hosts(self) -> list[str]:
        """Hosts of the master and workers groups, masters first, each once."""
        return list(dict.fromkeys((*self.masters, *self.workers)))


# --- the address rule: its one definition --------------------------------------------------


def address_source(values: Mapping[str, Any]) -> str | None:
    """The first of ADDRESS_VARIABLES set (not empty) in a host's values, else None."""
    for variable in ADDRESS_VARIABLES:
        if values.get(variable) not in (None, ""):
            return variable
    return None


def node_address(name: str, values: Mapping[str, Any]) -> str:
    """A host's cluster address: oq_address, else ansible_host, else its inventory name."""
    source = address_source(values)
    return str(values[source]) if source else name


# --- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    """One firewall rule of a node: `port` (a number or first-last) admits `sources` only."""

    name: str
    port: str
    sources: tuple[str, ...]

    def as_fact(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "sources": list(self.sources)}


@dataclass(frozen=True)
class ClusterModel:
    """The derived facts of a cluster with exactly one master."""

    master: str
    workers: tuple[str, ...]
    addresses: Mapping[str, str]  # every node of the master and workers groups
    host_cores: str  # [zworkers] host_cores, as openquake.cfg writes it
    allow: Mapping[str, tuple[Allow, ...]]  # each node's firewall rules

    @property
    def master_address(self) -> str:
        return self.addresses[self.master]

    @property
    def worker_addresses(self) -> list[str]:
        return [self.addresses[name] for name in self.workers]

    @property
    def cluster_addresses(self) -> list[str]:
        """The master's address, then the workers', each once."""
        return list(dict.fromkeys((self.master_address, *self.worker_addresses)))

    @property
    def nfs_clients(self) -> list[str]:
        """Who mounts the master's exports: the workers, but a master that also computes."""
        return [a for a in dict.fromkeys(self.worker_addresses) if a != self.master_address]

    def as_fact(self) -> dict[str, Any]:
        """The model as the `oq_cluster` fact (plain lists, dicts and strings)."""
        return {
            "master": self.master,
            "workers": list(self.workers),
            "addresses": dict(self.addresses),
            "master_address": self.master_address,
            "worker_addresses": self.worker_addresses,
            "cluster_addresses": self.cluster_addresses,
            "host_cores": self.host_cores,
            "nfs_clients": self.nfs_clients,
            "allow": {
                name: [rule.as_fact() for rule in rules] for name, rules in self.allow.items()
            },
        }


class ModelError(ValueError):
    """The inventory has no single master: there is no cluster to model."""


def build(cluster: ClusterData) -> ClusterModel:
    """The model of `cluster`; ModelError unless it has exactly one master."""
    if len(cluster.masters) != 1:
        raise ModelError(
            f"exactly one host must be in group '{MASTER_GROUP}', found "
            f"{', '.join(cluster.masters) or 'none'} (`oqcluster check -i INV` says more)"
        )
    master = cluster.masters[0]
    addresses = {name: cluster.hosts[name].address() for name in cluster.cluster_hosts()}
    cluster_addresses = tuple(
        dict.fromkeys((addresses[master], *(addresses[name] for name in cluster.workers)))
    )
    allow = {
        name: _allow_list(cluster, name, cluster_addresses, addresses[master])
        for name in cluster.cluster_hosts()
    }
    return ClusterModel(
        master=master,
        workers=cluster.workers,
        addresses=addresses,
        host_cores=_host_cores(cluster, addresses),
        allow=allow,
    )


def _host_cores(cluster: ClusterData, addresses: Mapping[str, str]) -> str:
    """`<address> <cores>, ...` for every worker; cores: oq_cores, else oq_default_cores."""
    entries = []
    for name in cluster.workers:
        values = cluster.hosts[name].values
        cores = values.get("oq_cores", values.get("oq_default_cores"))
        entries.append(f"{addresses[name]} {cores}")
    return ", ".join(entries)


def _allow_list(
    cluster: ClusterData, name: str, cluster_addresses: tuple[str, ...], master_address: str
) -> tuple[Allow, ...]:
    """A node's allow-list: on the master the engine ports and NFS from every cluster
    address; on a worker the workerpool control port from the master only."""
    values = cluster.hosts[name].values
    rules: list[Allow] = []
    if name in cluster.masters:
        ports = [
            ("dbserver", _port(values, "oq_dbserver_port")),
            ("receivers", _port(values, "oq_receiver_port_first", "oq_receiver_port_last")),
        ]
        if values.get("oq_webui_enabled", True):
            ports.append(("webui", _port(values, "oq_webui_port")))
        ports.append(("nfs", str(NFS_PORT)))
        rules += [Allow(rule, port, cluster_addresses) for rule, port in ports]
    if name in cluster.workers:
        rules.append(Allow("workerpool", _port(values, "oq_ctrl_port"), (master_address,)))
    return tuple(rules)


def _port(values: Mapping[str, Any], first: str, last: str | None = None) -> str:
    """A port, or a range `first-last`, as the firewall tools write it."""
    if last is None:
        return str(values.get(first))
    return f"{values.get(first)}-{values.get(last)}"
