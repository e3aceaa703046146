"""Run folders that refuse to be corrupted: verified tensor files, a lock, no overwrite
without --force, one-line errors for bad --out values."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from batchnorm.experiments.runner import (
    ConfigError,
    DamagedFileError,
    FolderBusyError,
    claim_folder,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)


def _claim(out, *, resume=False, force=False):
    with claim_folder(out, resume=resume, force=force):
        pass


def _checkpoint(path):
    save_checkpoint(path, {"lr": 0.1}, {"step": 7, "weights": torch.arange(4096.0)})


def test_flipped_bytes_inside_tensor_data_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="does not match its SHA-256") as error:
        load_checkpoint(path, {"lr": 0.1})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["truncated", "header", "empty", "missing"])
def test_truncated_or_headless_files_are_one_line_errors(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    _checkpoint(path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "header":
        path.write_bytes(b"garbage" + data[7:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(DamagedFileError) as error:
        load_tensors(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_the_checksum_file_beside_it_is_sha256sum_format(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint(path)
    result = subprocess.run(["sha256sum", "-c", "checkpoint.pt.sha256"], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "OK" in result.stdout
    assert load_checkpoint(path, {"lr": 0.1})["step"] == 7


def test_a_second_run_into_a_busy_folder_stops(tmp_path):
    with claim_folder(tmp_path / "run", resume=False, force=False), \
            pytest.raises(FolderBusyError, match="a run is in progress there"):
        _claim(tmp_path / "run", resume=True, force=True)
    with claim_folder(tmp_path / "run", resume=True, force=False):  # released: free again
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from batchnorm.experiments.runner import claim_folder
        with claim_folder({str(out)!r}, resume=False, force=False):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            _claim(out, resume=True, force=False)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            with claim_folder(out, resume=True, force=False):
                break
        except FolderBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_folder_holding_a_run_needs_resume_or_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_tensors(out / "checkpoint.pt", {"step": 1})
    with pytest.raises(ConfigError, match="already holds a run; --resume continues it"):
        _claim(out, resume=False, force=False)
    assert (out / "checkpoint.pt").exists()  # nothing touched
    _claim(out, resume=False, force=True)
    _claim(out, resume=True, force=False)


def test_bad_out_values_are_config_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        _claim(a_file, resume=False, force=False)
    with pytest.raises(ConfigError, match="cannot create it"):
        _claim(a_file / "sub", resume=False, force=False)


def test_a_refused_resume_leaves_the_records_as_they_were(tmp_path, capsys):
    from batchnorm.experiments.runner import CheckpointMismatchError, run_experiment

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"lr": 0.1}\n')

    def body(session):
        (out / "config.json").write_text('{"lr": 0.2}\n')  # written before the check
        raise CheckpointMismatchError("checkpoint.pt was written by a run with other settings")

    import argparse

    args = argparse.Namespace(out=str(out), data_dir=None, device="cpu", threads=1,
                              resume=True, force=False, no_progress=True)
    assert run_experiment("prog", args, body) == 2
    assert (out / "config.json").read_text() == '{"lr": 0.1}\n'
    assert capsys.readouterr().err.count("\n") == 1
