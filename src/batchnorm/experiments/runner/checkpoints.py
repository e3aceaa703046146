"""Checkpoints that know the settings that wrote them.

A checkpoint stores a *fingerprint*: a JSON-like dict of every setting that decides
the numbers. Loading it with other settings raises :class:`CheckpointMismatchError`
with a one-line message naming each changed setting, so ``--resume`` never silently
continues a different run (the experiments exit 2 on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchnorm.experiments.runner.errors import ExperimentError
from batchnorm.experiments.runner.folder import load_tensors, save_tensors

__all__ = [
    "CheckpointMismatchError",
    "check_fingerprint",
    "load_checkpoint",
    "resume_from",
    "save_checkpoint",
]

FORMAT = 1


class CheckpointMismatchError(ExperimentError):
    """A checkpoint (or finished result) written with other settings than this run's."""


def save_checkpoint(path: str | Path, fingerprint: dict[str, Any], state: dict[str, Any]
                    ) -> None:
    """``state`` (a dict of tensors and plain data) with the format and fingerprint, atomically."""
    save_tensors(path, {"format": FORMAT, "fingerprint": fingerprint, **state})


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``; raises :class:`CheckpointMismatchError` unless it was
    written with ``fingerprint``."""
    state = load_tensors(path)
    if state.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    check_fingerprint(path, state.get("fingerprint"), fingerprint)
    return state


def check_fingerprint(source: str | Path, saved: Any, wanted: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming the settings in which they differ."""
    if saved == wanted:
        return
    raise CheckpointMismatchError(
        f"{source} was written by a run with other settings ({_changes(saved, wanted)}); "
        "resume with the same flags, or choose another --out"
    )


def resume_from(path: Path, resume: bool) -> bool:
    """Whether to continue from the checkpoint ``path``; a fresh run (``resume`` False)
    deletes it, so that it can never be continued by mistake later."""
    if not resume:
        path.unlink(missing_ok=True)
        return False
    return path.exists()


def _changes(saved: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(saved, dict):
        return "it records no settings"
    old, new = _flat(saved), _flat(wanted)
    return "; ".join(
        f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
        for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)
    )


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level with dotted names: ``{"recipe.lr": 0.1, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
