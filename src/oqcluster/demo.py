"""`oqcluster demo up|down`: the local container cluster (one master, two workers).

The containers come from the Molecule scenario `molecule/demo` (the same node image and
systemd settings as the test scenarios); the cluster is then converged like any real one,
with `ansible-playbook site.yml -i inventories/local`, and the demo calculation runs on it.
Running `up` again reuses the image and the containers and converges with 0 changed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from rich.console import Console

from oqcluster.project import Project, find_project

SCENARIO = "demo"
INVENTORY = Path("inventories/local")
IMAGE_BUILDER = Path("molecule/images/build.sh")
VENV = "/opt/openquake/venv"
OQZ = f"{VENV}/bin/oqz"
FLAVORS = ("oqzmq", "openquake")
# The demo's engine flavor, kept beside its inventory (git-ignored; read by group_vars/all.yml)
# so that every later command on inventories/local (site.yml, verify) sees the same one.
FLAVOR_FILE = INVENTORY / "flavor.txt"
OPENQUAKE_JOB = "openquake/qa_tests_data/classical/case_01/job.ini"
console = Console(stderr=True, highlight=False)
T = TypeVar("T")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says what to do."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the local container cluster (docker)")
    actions = parser.add_subparsers(dest="demo_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="create/start the demo cluster, converge it, run the demo")
    up.add_argument("--no-run", action="store_true", help="do not run the demo calculation")
    up.add_argument("--size", default="small", help="size of the demo calculation (oqzmq)")
    up.add_argument("--flavor", choices=FLAVORS,
                    help="engine: oqzmq (bundled, the default) or openquake (the real engine); "
                    "kept for later runs until given again")
    actions.add_parser("down", help="remove the demo cluster (containers, network, volumes)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    project = find_project()
    try:
        if args.demo_action == "up":
            demo_up(project, run_job=not args.no_run, size=args.size, flavor=args.flavor)
        else:
            demo_down(project)
    except DemoError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    return 0


def demo_up(project: Project, run_job: bool, size: str, flavor: str | None = None) -> None:
    started = time.monotonic()
    require_docker()
    flavor = remember_flavor(project, flavor)
    image = step("node image", build_image, project)
    env = {"OQCLUSTER_IMAGE": image}
    step("containers", ensure_containers, project, env)
    step("systemd in every node", wait_for_systemd, container_names(project))
    step("converge (ansible-playbook site.yml -i inventories/local)", converge, project)
    if run_job and flavor == "openquake":
        step("demo calculation (oq engine --run classical/case_01)", run_openquake_job, project)
    elif run_job:
        step(f"demo calculation ({size})", run_demo_job, project, size)
    console.print(f"[green]demo cluster ready[/green] in {time.monotonic() - started:.0f} s")
    print_next_steps(project, flavor)


def remember_flavor(project: Project, flavor: str | None) -> str:
    """The flavor to converge: the one given (then kept), else the kept one, else oqzmq."""
    path = project.root / FLAVOR_FILE
    if flavor:
        path.write_text(flavor + "\n")
        return flavor
    kept = path.read_text().strip() if path.exists() else ""
    return kept if kept in FLAVORS else FLAVORS[0]


def demo_down(project: Project) -> None:
    require_docker()
    step("remove the demo cluster", molecule, project, "destroy", {})


def step(title: str, function: Callable[..., T], *args: object) -> T:
    console.rule(f"[bold]{title}")
    began = time.monotonic()
    result = function(*args)
    console.print(f"[dim]{title}: {time.monotonic() - began:.1f} s[/dim]")
    return result


def require_docker() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise DemoError(
            "cannot reach the docker daemon. Run `make demo` (installs docker.io and starts "
            "dockerd) or `sudo scripts/host-deps.sh`, then try again."
        )


def build_image(project: Project) -> str:
    result = subprocess.run(
        ["bash", str(project.root / IMAGE_BUILDER)], stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise DemoError("building the node image failed (see above); it needs root for debootstrap")
    return result.stdout.strip().splitlines()[-1]


def container_names(project: Project) -> list[str]:
    config = yaml.safe_load((project.root / "molecule" / SCENARIO / "molecule.yml").read_text())
    return [platform["name"] for platform in config["platforms"]]


def container_state(name: str) -> str | None:
    result = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Status}}", name],
        capture_output=True, text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_containers(project: Project, env: dict[str, str]) -> None:
    states = {name: container_state(name) for name in container_names(project)}
    if all(states.values()):
        stopped = [name for name, state in states.items() if state != "running"]
        if stopped:
            run_command(["docker", "start", *stopped])
        console.print("reusing the existing containers: " + ", ".join(states))
        return
    # Some or all are missing: start from a clean slate (molecule's state may be stale).
    molecule(project, "destroy", env)
    molecule(project, "create", env)


def molecule(project: Project, action: str, env: dict[str, str]) -> None:
    run_command([venv_tool("molecule"), action, "-s", SCENARIO], cwd=project.root, env=env)


def wait_for_systemd(names: Sequence[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            state = subprocess.run(
                ["docker", "exec", name, "systemctl", "is-system-running"],
                capture_output=True, text=True,
            ).stdout.strip()
            if state in ("running", "degraded"):
                console.print(f"{name}: systemd {state}")
                break
            if time.monotonic() > deadline:
                raise DemoError(f"{name}: systemd is still {state!r} after {timeout:.0f} s; "
                                f"look at `docker exec {name} journalctl -b`")
            time.sleep(1)


def converge(project: Project) -> None:
    run_command(
        [venv_tool("ansible-playbook"), "site.yml", "-i", str(INVENTORY)],
        cwd=project.root, env={"ANSIBLE_CONFIG": str(project.root / "ansible.cfg")},
    )


def run_demo_job(project: Project, size: str) -> None:
    master = container_names(project)[0]
    as_openquake = ["docker", "exec", master, "runuser", "-u", "openquake", "--"]
    run_command([*as_openquake, OQZ, "workers", "start"])
    run_command([*as_openquake, OQZ, "run", "demo", "--size", size])


def run_openquake_job(project: Project) -> None:
    """A hazard calculation that ships with the real engine, in zmq mode on both workers."""
    master = container_names(project)[0]
    site = subprocess.run(
        ["docker", "exec", master, f"{VENV}/bin/python", "-c",
         "import openquake, os; print(os.path.dirname(openquake.__path__[0]))"],
        capture_output=True, text=True,
    ).stdout.strip()
    run_command(["docker", "exec", master, "runuser", "-u", "openquake", "--",
                 f"{VENV}/bin/oq", "engine", "--run", f"{site}/{OPENQUAKE_JOB}"])


def print_next_steps(project: Project, flavor: str = FLAVORS[0]) -> None:
    master = container_names(project)[0]
    as_openquake = f"docker exec -it {master} runuser -u openquake --"
    if flavor == "openquake":
        engine = [f"  {as_openquake} {VENV}/bin/oq engine --lhc",
                  f"  {as_openquake} {VENV}/bin/oq engine --run JOB.ini"]
    else:
        engine = [f"  {as_openquake} {OQZ} list",
                  f"  {as_openquake} {OQZ} run demo --size medium"]
    console.print("\n".join([
        "\nNext:",
        f"  .venv/bin/oqcluster verify -i {INVENTORY}     prove every node and the cluster work",
        *engine,
        "  make demo-down                                  remove the demo cluster",
    ]))


def venv_tool(name: str) -> str:
    """The tool installed beside the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_command(command: Sequence[str], cwd: Path | None = None,
                env: dict[str, str] | None = None) -> None:
    console.print(f"[dim]$ {shlex.join(command)}[/dim]")
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise DemoError(f"`{shlex.join(command)}` failed with exit code {result.returncode}")
