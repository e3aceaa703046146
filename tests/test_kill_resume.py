"""Every experiment that checkpoints survives ``kill -9`` and refuses a damaged checkpoint.

Each experiment runs as a user runs it (the ``batchnorm`` command, real data, a
subprocess), is killed with SIGKILL once its first checkpoint is on disk, and is
then continued with ``--resume``: its metrics must equal those of an uninterrupted
run with the same flags, byte for byte. A checkpoint with flipped bytes must be
refused with a one-line error and exit code 2, leaving the folder as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIGURE1 = ["reproduce", "figure1", "--preset", "quick", "--steps", "1200", "--seeds", "1",
           "--checkpoint-every", "150", "--eval-every", "150", "--population-batches", "5",
           "--layer-images", "500", "--no-progress"]


INCEPTION = ["reproduce", "inception", "--preset", "quick", "--variants", "bn-x5", "inception",
             "--seeds", "1", "--other-seeds", "1", "--steps", "160", "--evaluations", "8",
             "--no-progress"]


def _batchnorm(*args: str, wait: bool = True, **kwargs):
    command = [sys.executable, "-m", "batchnorm", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
                          **kwargs)


def _first(pattern: str, out: Path) -> Path | None:
    return next(iter(sorted(out.glob(pattern))), None) if out.exists() else None


def _kill_after_checkpoint(args: list[str], out: Path, pattern: str) -> Path:
    """Run, SIGKILL once a file matching ``pattern`` exists in ``out``; returns that file."""
    process = _batchnorm(*args, wait=False)
    deadline = time.monotonic() + 600
    try:
        while (checkpoint := _first(pattern, out)) is None:
            if process.poll() is not None:
                pytest.fail(f"finished before its first checkpoint: {process.stderr.read()}")
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return checkpoint


def _damaged_copy_is_refused(args: list[str], killed: Path, checkpoint: Path, tmp_path: Path,
                             where: slice) -> None:
    """A copy of the killed run with bytes ``where`` of its checkpoint flipped: ``--resume``
    refuses it in one line (exit 2), leaves its config alone and keeps the evidence."""
    damaged = tmp_path / "damaged"
    shutil.copytree(killed, damaged)
    copy = damaged / checkpoint.relative_to(killed)
    data = bytearray(copy.read_bytes())
    data[where] = bytes(b ^ 0xFF for b in data[where])
    copy.write_bytes(bytes(data))
    config = (damaged / "config.json").read_bytes()
    result = _batchnorm(*args, "--out", str(damaged), "--resume")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert (damaged / "config.json").read_bytes() == config
    assert copy.read_bytes() == bytes(data)  # the evidence is kept, not deleted


def test_figure1_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Also: a fresh run into the killed folder is refused, and so is a damaged checkpoint
    (on a copy of the killed run: one kill serves both)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = _batchnorm(*FIGURE1, "--out", str(whole))
    assert result.returncode == 0, result.stderr
    checkpoint = _kill_after_checkpoint([*FIGURE1, "--out", str(killed)], killed,
                                        "checkpoint.pt")
    assert not (killed / "summary.json").exists()
    size = checkpoint.stat().st_size
    _damaged_copy_is_refused(FIGURE1, killed, checkpoint, tmp_path,
                             slice(size // 2, size // 2 + 64))
    # a fresh run into the killed run's folder is refused; --resume continues it
    refused = _batchnorm(*FIGURE1, "--out", str(killed))
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    resumed = _batchnorm(*FIGURE1, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()


def test_inception_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Also: a damaged checkpoint is refused (on a copy of the killed run)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = _batchnorm(*INCEPTION, "--out", str(whole))
    assert result.returncode == 0, result.stderr
    checkpoint = _kill_after_checkpoint([*INCEPTION, "--out", str(killed)], killed,
                                        "**/checkpoints/*.pt")
    _damaged_copy_is_refused(INCEPTION, killed, checkpoint, tmp_path, slice(-100, -36))
    resumed = _batchnorm(*INCEPTION, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
