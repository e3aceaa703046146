"""``report.md`` and ``summary.json`` of the lab: the verdict table first, then a section
per claim (its statement, rule, finding, tables and plots), then how it ran."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchnorm.experiments.claims.base import ClaimResult, ClaimSpec
from batchnorm.experiments.runner import write_json, write_text

__all__ = ["summary_entry", "write_report"]


def _interval(result: ClaimResult) -> list[float | None]:
    return [result.value.low, result.value.high]


def summary_entry(spec: ClaimSpec, record: Mapping[str, Any]) -> dict[str, Any]:
    """One claim's entry of ``summary.json``."""
    result = ClaimResult.from_dict(record["result"])
    return {"id": spec.id, "title": spec.title, "source": spec.source,
            "verdict": result.verdict, "metric": result.metric, "value": result.value.mean,
            "interval": _interval(result), "seeds": result.value.n,
            "wall_s": record.get("wall_s"), "finding": result.finding}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _number(result: ClaimResult) -> str:
    value = result.value
    if value.low is None or value.high is None:
        return f"{value.mean:.4g} (n={value.n}, no interval)"
    return f"{value.mean:.4g} [{value.low:.4g}, {value.high:.4g}]"


def write_report(out: Path, preset: str, claims: Mapping[str, tuple[ClaimSpec, Mapping[str, Any]]],
                 runtime: Mapping[str, Any], wall_s: float) -> None:
    """Write ``out/report.md`` and ``out/summary.json`` for the claims done so far."""
    entries = [summary_entry(spec, record) for spec, record in claims.values()]
    write_json(out / "summary.json", {"preset": preset, "claims": entries,
                                      "wall_s": round(wall_s, 1), "runtime": dict(runtime)})
    lines = [
        "# The claims lab: what Batch Normalization buys, tested on real data",
        "",
        f"Preset `{preset}`; {len(entries)} claims; their recorded training time adds up to "
        f"{sum(entry['wall_s'] or 0 for entry in entries) / 60:.1f} min (this invocation: "
        f"{wall_s / 60:.1f} min; a claim reused with `--resume` keeps its own time). Each verdict "
        "comes from a rule written in the code before the run, applied to the 95% interval "
        "over seeds: *supported* when the interval lies on the claim's side of the margin, "
        "*not supported* when it lies on the other side, *mixed* when it straddles it.",
        "",
        "| claim | source | what was measured | value [95% interval] | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for spec, record in claims.values():
        result = ClaimResult.from_dict(record["result"])
        lines.append(f"| [{spec.id}](#{spec.id}) | {_cell(spec.source)} | "
                     f"{_cell(result.metric)} | {_number(result)} | {result.value.n} | "
                     f"**{result.verdict}** |")
    against = [(spec, ClaimResult.from_dict(record["result"]))
               for spec, record in claims.values()]
    against = [(spec, result) for spec, result in against if result.verdict != "supported"]
    if against:
        lines += ["", "## Against the claims (not supported or mixed)", ""]
        lines += [f"- **{spec.id}** ({spec.source}: {_cell(spec.statement)}): "
                  f"{result.verdict}. {_cell(result.finding)}" for spec, result in against]
    for spec, record in claims.values():
        result = ClaimResult.from_dict(record["result"])
        lines += [
            "", f'<a id="{spec.id}"></a>', "", f"## {spec.id}: {spec.title}", "",
            f"**Claim** ({spec.source}): {spec.statement}", "",
            f"**Measured**: {spec.measured}", "",
            f"**Rule** (fixed before the run): {spec.rule}", "",
            f"**Verdict: {result.verdict}**: {result.metric} = {_number(result)}. "
            f"{result.finding}", "",
            result.section.strip(), "",
            f"Config: [`{spec.id}/config.json`]({spec.id}/config.json); wall time "
            f"{record.get('wall_s', float('nan')):.0f} s.",
        ]
    lines += ["", "## How it ran", ""]
    lines += [f"- {key}: `{value}`" for key, value in runtime.items()]
    write_text(out / "report.md", "\n".join(lines) + "\n")
