"""``batchnorm bench``: timing helpers, the Markdown table, the re-exec, a quick run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from batchnorm import benchmark


def test_summarize_median_and_iqr():
    timing = benchmark._summarize([0.001, 0.002, 0.003, 0.004, 0.100])
    assert timing.median_ms == pytest.approx(3.0)
    assert 0 < timing.iqr_ms < 100
    assert timing.samples == 5


def test_round_robin_calls_each_candidate_equally():
    calls = {"a": 0, "b": 0}

    def make(name):
        def run():
            calls[name] += 1

        return run

    timings = benchmark.time_round_robin(
        {"a": make("a"), "b": make("b")}, repeats=4, warmup=2, sync=lambda: None
    )
    assert calls == {"a": 6, "b": 6}
    assert set(timings) == {"a", "b"} and timings["a"].samples == 4


def test_arguments():
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--quick", "--out", "x.json", "--device", "cpu"])
    assert args.quick and args.threads == 2 and str(args.out) == "x.json"


def test_reexec_sets_allocator_environment(monkeypatch):
    seen = {}

    def fake_execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv(benchmark._REEXEC_GUARD, raising=False)
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    with pytest.raises(SystemExit):
        benchmark.run(parser.parse_args(["--quick"]))
    assert seen["path"] == sys.executable
    for key, value in benchmark.ALLOCATOR_ENV.items():
        assert seen["env"][key] == value
    assert seen["env"][benchmark._REEXEC_GUARD] == "1"


def test_markdown_table():
    row = {
        "case": "8x16", "layout": "nchw", "mode": "train_fwd", "backend": "torch",
        "median_ms": 1.0, "iqr_ms": 0.1, "gbps": 2.0, "ratio_native": 1.0, "ratio_floor": 2.5,
    }  # fmt: skip
    meta = {
        "device": "cpu", "threads": 2, "dtype": "float32", "torch": "2", "cpu": "x",
        "load_before": "0", "load_after": "0", "repeats": 3,
    }  # fmt: skip
    e2e = {"model": "mlp", "variant": "torch", "median_ms": 1.0, "iqr_ms": 0.0,
           "ratio_torch": 1.0}  # fmt: skip
    text = benchmark.markdown({"meta": meta, "kernels": [row], "end_to_end": [e2e]})
    assert "| 8x16 | nchw | train_fwd | torch | 1.000 |" in text
    assert "| mlp | torch | 1.000 |" in text


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown(tmp_path):
    """The whole CLI path once (re-exec, every backend and mode, the end-to-end steps, both
    files), on one small case: the compiled backends' compilations dominate, per case."""
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, "-m", "batchnorm.cli", "bench", "--quick", "--repeats", "2",
         "--cases", "60x100", "--out", str(out), "--md", str(md)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["allocator_env"]["MALLOC_MMAP_THRESHOLD_"] is not None
    assert {row["case"] for row in data["kernels"]} == {"60x100"}
    modes = {row["mode"] for row in data["kernels"]}
    assert modes == set(benchmark.MODES)
    backends = {row["backend"] for row in data["kernels"]}
    assert {"torch", "native", "reference", "compiled", "auto"} <= backends
    for row in data["kernels"]:
        assert row["median_ms"] > 0 and row["ratio_floor"] > 0 and row["gbps"] > 0
    models = {row["model"] for row in data["end_to_end"]}
    assert any(name.startswith("figure1_mlp") for name in models)
    assert any(name.startswith("convnet") for name in models)
    assert md.read_text().startswith("# BN benchmark")


def test_step_benchmark_pairs_same_weights_and_writes_a_table(tmp_path):
    """--model mlp: three variants with the same weights, paired ratios, a Markdown table."""
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--model", "mlp", "--quick", "--repeats", "4", "--no-reexec"])
    variants = benchmark._step_variants("mlp")
    models = [benchmark._mlp(norm) for norm in variants.values()]
    keys = [list(m.state_dict()) for m in models]
    assert keys[0] == keys[1] == keys[2]  # the weights load across variants
    step = benchmark.bench_step(args)
    assert [row["variant"] for row in step["rows"]] == list(variants)
    assert step["rows"][0]["ratio_torch"] == 1.0
    assert all(row["median_ms"] > 0 and row["samples"] == 4 for row in step["rows"])
    meta = {"device": "cpu", "threads": 1, "torch": "x", "cpu": "y", "load_before": "0",
            "load_after": "0", "date": "d"}  # fmt: skip
    text = benchmark.step_markdown({"meta": meta, "step": step})
    assert text.startswith("# Training step: mlp, eager") and "x torch" in text
