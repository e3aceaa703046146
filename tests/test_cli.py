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


def _imported_after(*argvs: list[str]) -> list[set[str]]:
    """The batchnorm modules one fresh interpreter has imported after each ``cli.main(argv)``
    in turn (imports only accumulate, so each set is what that command and the ones before it
    needed)."""
    code = (
        "import sys\n"
        "from batchnorm import cli\n"
        f"for argv in {[list(argv) for argv in argvs]!r}:\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    print('MODULES', ' '.join(m for m in sys.modules if m.startswith('batchnorm.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    lines = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("MODULES")]
    assert len(lines) == len(argvs), result.stdout
    return [set(line) for line in lines]


def test_subcommand_modules_are_imported_only_when_chosen():
    modules = ("batchnorm.experiments.figure1", "batchnorm.experiments.inception",
               "batchnorm.benchmark", "batchnorm.data._cli_fetch")
    top, reproduce, chosen = _imported_after(["--help"], ["reproduce", "--help"],
                                             ["reproduce", "figure1", "--help"])
    assert not set(modules) & top
    assert not set(modules) & reproduce
    assert "batchnorm.experiments.figure1" in chosen
    assert not {"batchnorm.experiments.inception", "batchnorm.benchmark"} & chosen


def test_python_dash_m_batchnorm_runs():
    result = subprocess.run(
        [sys.executable, "-m", "batchnorm", "reproduce", "figure1", "--help"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: batchnorm reproduce figure1")
    assert "--preset" in result.stdout and "--resume" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "batchnorm", "reproduce", "figure1", "--steps",
                          "0"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--steps" in bad.stderr
