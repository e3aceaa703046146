"""``batchnorm reproduce inception --nproc N``: ranks share each global batch (SyncBN, averaged
gradients) and give one process's run up to floating point; rank 0 writes; resume works."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchnorm.cli import main
from batchnorm.experiments import inception
from batchnorm.experiments.inception import cli as inception_cli
from batchnorm.experiments.inception import parallel, train_run
from batchnorm.experiments.inception import train as train_module
from batchnorm.experiments.inception.config import PRESETS, InceptionExperimentConfig
from batchnorm.experiments.runner import RunOptions, from_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _bounded_collectives(monkeypatch):
    """A rank stuck in a collective fails within 2 minutes (its children inherit this)."""
    monkeypatch.setenv(parallel.TIMEOUT_VARIABLE, "120")

FLAGS = ["reproduce", "inception", "--dataset", "synthetic", "--preset", "quick",
         "--variants", "bn-x5", "--seeds", "1", "--steps", "6", "--evaluations", "3",
         "--no-progress"]


@pytest.mark.parametrize("batch, ranks", [(32, 2), (32, 3), (7, 4), (5, 5)])
def test_shards_are_contiguous_near_equal_and_cover_the_batch(batch, ranks):
    shares = [parallel.shard(batch, rank, ranks) for rank in range(ranks)]
    assert [i for share in shares for i in range(batch)[share]] == list(range(batch))
    sizes = [share.stop - share.start for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_torchrun_environment_is_detected():
    assert parallel.from_environment({}) is None
    assert parallel.from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    launch = parallel.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert launch == parallel.Launch(3, 4, 1, "env://")
    assert parallel.world_size() == 1 and parallel.is_main()  # no process group here


@pytest.mark.parametrize("extra, message", [
    (["--nproc", "2", "--jobs", "2"], "choose one"),
    (["--nproc", "3", "--batch-size", "2"], "smaller than the 3 processes"),
])
def test_impossible_parallel_settings_exit_2_before_training(tmp_path, capsys, extra, message):
    assert main([*FLAGS, "--out", str(tmp_path / "run"), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert not (tmp_path / "run" / "results").exists()


def _cli_spec_and_splits():
    parser = argparse.ArgumentParser()
    inception.add_arguments(parser)
    args = parser.parse_args(FLAGS[2:])
    (spec,) = inception.plan_runs(args)
    config = from_args(InceptionExperimentConfig, args, PRESETS)
    return spec, inception_cli._load(config, from_args(RunOptions, args))


def _result(folder: Path) -> dict:
    return json.loads((folder / "results" / "bn-x5.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same run in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main([*FLAGS, "--out", str(out)]) == 0
    return _result(out)


def _assert_same_run(other: dict, one: dict) -> None:
    assert [h["step"] for h in other["history"]] == [2, 4, 6]
    assert [h["train_loss"] for h in other["history"]] == pytest.approx(
        [h["train_loss"] for h in one["history"]], rel=1e-4)
    assert [h["val_accuracy"] for h in other["history"]] == pytest.approx(
        [h["val_accuracy"] for h in one["history"]], abs=0.01)
    assert other["final_val_accuracy"] == pytest.approx(one["final_val_accuracy"], abs=0.01)
    assert other["fingerprint"] == one["fingerprint"]


def _torchrun(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "batchnorm", *FLAGS, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_under_torchrun_rank_0_writes_the_same_run(tmp_path, one_process):
    done = _torchrun("--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(_result(tmp_path / "run"), one_process)
    assert (tmp_path / "run" / "report.md").stat().st_size > 0
    # Rank 0 refuses the flags: the other rank is released instead of waiting.
    refused = _torchrun("--out", str(tmp_path / "refused"), "--batch-size", "1")
    assert refused.returncode != 0
    assert "smaller than the 2 processes" in refused.stderr


@pytest.mark.slow
def test_two_processes_match_one_and_resume_from_its_checkpoint(tmp_path, monkeypatch, capsys,
                                                                 one_process):
    assert main([*FLAGS, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0

    # Interrupted after its first checkpoint (step 2) in one process, finished by two.
    spec, splits = _cli_spec_and_splits()
    real_save = train_module.save_checkpoint

    def interrupting_save(path, fingerprint, state):
        real_save(path, fingerprint, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, splits, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = [*FLAGS, "--out", str(tmp_path / "resumed"), "--nproc", "2", "--resume"]
    assert main([*resumed, "--dropout", "0.1"]) == 2  # refused before any rank starts
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "recipe.dropout" in error
    assert main(resumed) == 0

    for name in ("two", "resumed"):
        _assert_same_run(_result(tmp_path / name), one_process)
        for produced in ("report.md", "summary.json", "config.json", "results/bn-x5.pt"):
            assert (tmp_path / name / produced).stat().st_size > 0
    runtime = json.loads((tmp_path / "two" / "config.json").read_text())["runtime"]
    assert runtime["processes_per_run"] == 2
