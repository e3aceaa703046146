"""Run the selected claims in turn, each into its own folder, then write the report.

For each claim: its preset's config is written to ``<id>/config.json``; with ``--resume``
a claim whose ``<id>/result.json`` holds the same config is not run again (and the
sub-runs of a claim that was interrupted come back from ``cache/``); the result goes to
``<id>/result.json``; ``report.md`` and ``summary.json`` are rewritten after every
claim, so a long run shows its verdicts as they come. ``--force`` removes the lab's
previous claim folders and cache first. A claim that fails stops the lab (its error,
one line); the claims before it keep their results.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import batchnorm
from batchnorm.experiments.claims import registry
from batchnorm.experiments.claims.base import CACHE_FOLDER, ClaimContext, ClaimResult
from batchnorm.experiments.claims.config import LabConfig
from batchnorm.experiments.claims.report import write_report
from batchnorm.experiments.runner import Session, print_summary, write_json

__all__ = ["run_lab"]

RESULT = "result.json"


def _stored(folder: Path, preset: str, config: dict[str, Any]) -> dict[str, Any] | None:
    path = folder / RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("preset") != preset or record.get("config") != config:
        return None
    return record


def _clear(out: Path) -> None:
    for name in (CACHE_FOLDER, *registry.CLAIM_IDS):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)


def run_lab(config: LabConfig, preset: str, session: Session) -> int:
    out = Path(session.options.out)
    if session.options.force:
        _clear(out)
    salt = {"batchnorm": batchnorm.__version__, "torch": torch.__version__,
            "device": session.device.type}
    datasets: dict[str, Any] = {}
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    selected = config.selected()
    for claim_id in registry.CLAIM_IDS:
        folder = out / claim_id
        if claim_id not in selected:
            # an earlier invocation's result (--only, then --resume): kept in the report
            spec = registry.load_claim(claim_id) if session.options.resume else None
            stored = (_stored(folder, preset, spec.presets[preset].to_dict())
                      if spec is not None and preset in spec.presets else None)
            if stored is not None:
                records[claim_id] = stored
            continue
        spec = registry.load_claim(claim_id)
        if preset not in spec.presets:
            continue
        claim_config = spec.presets[preset].to_dict()
        record = _stored(folder, preset, claim_config) if session.options.resume else None
        if record is None:
            context = ClaimContext(claim_id, out, session.device, session.options.data_dir,
                                   not session.options.no_progress, datasets, salt)
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "config.json", {"claim": claim_id, "preset": preset,
                                                "config": claim_config})
            clock = time.perf_counter()
            result = spec.run(spec.presets[preset], context)
            record = {"claim": claim_id, "preset": preset, "config": claim_config,
                      "wall_s": round(time.perf_counter() - clock, 1),
                      "result": result.to_dict()}
            write_json(folder / RESULT, record)
        records[claim_id] = record
        done = {cid: (registry.load_claim(cid), rec) for cid, rec in records.items()}
        write_report(out, preset, done, session.runtime(), time.perf_counter() - started)
    if not records:
        session.warn(f"no claim has a {preset!r} preset among {', '.join(selected)}")
        return 2
    verdicts = [(claim_id, ClaimResult.from_dict(record["result"]).verdict)
                for claim_id, record in records.items()]
    print_summary(f"batchnorm reproduce claims ({preset})",
                  [f"{len(records)} claims in {time.perf_counter() - started:.0f} s"],
                  out / "report.md", verdicts)
    return 0
