"""The claims lab's loop, with fake claims: per-claim results, the report and summary,
--only, --resume (claims and memoized sub-runs reused), --force, refusals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchnorm import cli
from batchnorm.experiments.claims import ClaimContext, ClaimResult, ClaimSpec, registry
from batchnorm.experiments.runner import Settings, setting
from batchnorm.experiments.runner.evidence import mean_interval


@dataclass(frozen=True)
class FakeConfig(Settings):
    seeds: int = setting(3, "seeds")
    shift: float = setting(1.0, "the measured number's offset")


CALLS: list[str] = []
SUB_RUNS: list[int] = []


def _fake(claim_id: str, fail: bool = False) -> ClaimSpec:
    def run(config: FakeConfig, context: ClaimContext) -> ClaimResult:
        CALLS.append(claim_id)
        if fail:
            raise RuntimeError("boom")

        def sub_run(seed: int) -> float:
            SUB_RUNS.append(seed)
            return config.shift + 0.01 * seed

        values = [context.memo({"what": "shared sub-run", "seed": seed, "shift": config.shift},
                               lambda seed=seed: sub_run(seed)) for seed in range(config.seeds)]
        interval = mean_interval(values)
        (context.folder / "plot.png").write_bytes(b"png")
        verdict = "supported" if interval.low > 0 else "not supported"
        return ClaimResult(verdict, "shift (units)", interval, f"{claim_id} found it.",
                           f"| seed | value |\n|---|---|\n| 0 | {values[0]} |",
                           {"values": values}, (context.relative(context.folder / "plot.png"),))

    presets = {"quick": FakeConfig(seeds=2), "default": FakeConfig(),
               "gpu": FakeConfig(seeds=5)}
    if claim_id == "beta":
        presets = {"quick": FakeConfig(seeds=2, shift=-1.0), "default": FakeConfig(shift=-1.0)}
    return ClaimSpec(claim_id, f"the {claim_id} claim", f"Source {claim_id}",
                     f"{claim_id} holds", "a number", "supported if > 0", presets, run)


@pytest.fixture
def fake_claims(monkeypatch: pytest.MonkeyPatch) -> dict[str, ClaimSpec]:
    specs = {name: _fake(name) for name in ("alpha", "beta")}
    monkeypatch.setattr(registry, "CLAIM_IDS", tuple(specs))
    monkeypatch.setattr(registry, "load_claim", lambda name: specs[name])
    CALLS.clear()
    SUB_RUNS.clear()
    return specs


def _lab(out: Path, *flags: str) -> int:
    return cli.main(["reproduce", "claims", "--out", str(out), "--no-progress", *flags])


def test_run_writes_results_report_and_summary(fake_claims, tmp_path: Path, capsys) -> None:
    assert _lab(tmp_path, "--preset", "quick") == 0
    assert CALLS == ["alpha", "beta"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preset"] == "quick"
    entries = {entry["id"]: entry for entry in summary["claims"]}
    assert entries["alpha"]["verdict"] == "supported"
    assert entries["beta"]["verdict"] == "not supported"
    assert entries["alpha"]["seeds"] == 2
    assert entries["alpha"]["value"] == pytest.approx(1.005)
    low, high = entries["alpha"]["interval"]
    assert low < 1.005 < high
    assert set(entries["alpha"]) >= {"id", "verdict", "metric", "value", "interval", "seeds"}
    report = (tmp_path / "report.md").read_text()
    table = report.split("## ")[0]
    assert "| [alpha](#alpha) | Source alpha |" in table and "**not supported**" in table
    assert "## Against the claims" in report and "beta found it." in report
    assert report.index("## alpha") < report.index("## beta")
    record = json.loads((tmp_path / "alpha" / "result.json").read_text())
    assert record["config"] == {"seeds": 2, "shift": 1.0} and record["preset"] == "quick"
    assert (tmp_path / "alpha" / "config.json").is_file()
    assert ClaimResult.from_dict(record["result"]).plots == ("alpha/plot.png",)
    out = capsys.readouterr().out
    assert "supported: alpha" in out and "not supported: beta" in out


def test_memo_shares_sub_runs_between_claims(fake_claims, tmp_path: Path) -> None:
    assert _lab(tmp_path, "--preset", "quick") == 0
    # alpha computed seeds 0, 1; beta has another shift, so its own two sub-runs
    assert SUB_RUNS == [0, 1, 0, 1]
    fake_claims["beta"] = _fake("alpha")  # same keys as alpha: nothing recomputed
    SUB_RUNS.clear()
    assert _lab(tmp_path, "--preset", "quick", "--force") == 0  # --force clears the cache
    assert SUB_RUNS == [0, 1]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_resume_reuses_finished_claims_and_only_keeps_others(fake_claims, tmp_path: Path
                                                             ) -> None:
    assert _lab(tmp_path, "--preset", "quick", "--only", "alpha") == 0
    assert CALLS == ["alpha"] and not (tmp_path / "beta").exists()
    assert _lab(tmp_path, "--preset", "quick", "--only", "beta") == 2  # folder holds a run
    assert _lab(tmp_path, "--preset", "quick", "--only", "beta", "--resume") == 0
    assert CALLS == ["alpha", "beta"]
    ids = [e["id"] for e in json.loads((tmp_path / "summary.json").read_text())["claims"]]
    assert ids == ["alpha", "beta"]  # the earlier --only alpha result is in the report
    assert _lab(tmp_path, "--preset", "quick", "--resume") == 0
    assert CALLS == ["alpha", "beta"]  # both done: nothing runs again
    assert _lab(tmp_path, "--preset", "default", "--resume") == 0
    assert CALLS == ["alpha", "beta", "alpha", "beta"]  # another preset: other config


def test_a_damaged_cache_entry_is_recomputed(fake_claims, tmp_path: Path, capsys) -> None:
    assert _lab(tmp_path, "--preset", "quick", "--only", "alpha") == 0
    for path in (tmp_path / "cache").glob("*.json"):
        path.write_text("{not json")
    (tmp_path / "alpha" / "result.json").unlink()
    SUB_RUNS.clear()
    assert _lab(tmp_path, "--preset", "quick", "--only", "alpha", "--resume") == 0
    assert SUB_RUNS == [0, 1]
    assert "unreadable cache entry" in capsys.readouterr().err


def test_claim_without_the_preset_is_skipped(fake_claims, tmp_path: Path) -> None:
    assert _lab(tmp_path, "--preset", "gpu") == 0
    assert CALLS == ["alpha"]


def test_unknown_claim_is_a_one_line_error(fake_claims, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _lab(tmp_path, "--only", "alpha,gamma")
    assert exit_info.value.code == 2
    assert "expected one of alpha, beta" in capsys.readouterr().err


def test_the_registry_names_modules_of_this_package() -> None:
    assert len(set(registry.CLAIMS.values())) == len(registry.CLAIMS)
    assert all(":" in target for target in registry.CLAIMS.values())
    assert registry.CLAIM_IDS[0] == "higher-lr"
