"""The README's runnable example does what the README says it does."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_bring_your_own_model_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _section("Bring your own model"), re.S)
    assert len(blocks) == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("error")  # the example must not warn
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    report, difference = printed.getvalue().strip().split("\n")[0], printed.getvalue().split()[-1]
    assert report == "fold (graph): 5 changed, 0 left"
    assert float(difference) < 1e-4


def test_small_batches_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _section("Small, split and frozen batches"), re.S)
    assert len(blocks) == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    lines = printed.getvalue().strip().split("\n")
    assert lines[0] == "True"  # accumulated statistics == one forward of the whole batch
    assert lines[1].startswith("1 [") and "statistics from only 1 batch" in lines[1]
