"""The `batchnorm` command dispatcher."""

import subprocess
import sys

import pytest

from batchnorm import cli


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "reproduce", "bench"):
        assert command in out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_broken_subcommand_module_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(
        cli, "_COMMANDS", [(("ghost",), "batchnorm._no_such_module", "missing")]
    )
    assert cli.main(["ghost"]) == 2
    assert "cannot load batchnorm._no_such_module" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "batchnorm.cli", "data", "--help"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0 and "fetch" in result.stdout
