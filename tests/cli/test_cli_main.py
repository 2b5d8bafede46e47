"""The `oqcluster` entry point: subcommand registration, usage and Ansible errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from cli_cases import two_nodes

from oqcluster import cli

OQCLUSTER = Path(sys.executable).parent / "oqcluster"


def test_console_script_lists_the_subcommands() -> None:
    run = subprocess.run([str(OQCLUSTER), "--help"], capture_output=True, text=True,
                         check=False, timeout=60)

    assert run.returncode == 0, run.stderr
    for command in ("check", "render", "verify"):
        assert command in run.stdout


def test_every_subcommand_is_registered_with_its_handler() -> None:
    parser = cli.build_parser()
    [commands] = [action for action in parser._actions
                  if isinstance(action, argparse._SubParsersAction)]

    assert set(commands.choices) == {"check", "render", "verify", "demo"}
    for name, subparser in commands.choices.items():
        assert callable(subparser.get_default("handler")), name


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])

    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_an_ansible_error_is_a_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = two_nodes(tmp_path)
    (tmp_path / "credentials").write_text("a file where the secret's directory goes")
    monkeypatch.chdir(Path(__file__).parents[2])

    code = cli.main(["render", "-i", str(inventory), "--host", "w1"])

    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
