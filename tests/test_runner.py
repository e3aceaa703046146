"""The experiments' shared runner: settings -> flags, presets, seeds, checkpoints, session."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from batchnorm.experiments import figure1
from batchnorm.experiments.runner import (
    NONNEGATIVE,
    POSITIVE,
    CheckpointMismatchError,
    ConfigError,
    DamagedFileError,
    RunMetadata,
    SeedStreams,
    Settings,
    add_flags,
    add_preset_flag,
    comma_separated,
    from_args,
    indexed_seed,
    interval,
    load_checkpoint,
    load_tensors,
    print_summary,
    resolve_device,
    resume_from,
    run_experiment,
    save_checkpoint,
    save_tensors,
    setting,
)
from batchnorm.experiments.runner.plots import mean_band, save_plot


@dataclass(frozen=True)
class Example(Settings):
    steps: int = setting(10, "steps", check=POSITIVE)
    rate: float = setting(0.5, "a rate", check=interval(0, 1, high_open=True))
    name: str = setting("a", "a name", choices=("a", "b"))
    sizes: tuple[int, ...] = setting((1, 2), "sizes", check=POSITIVE)
    limit: int | None = setting(None, "optional", check=NONNEGATIVE)
    switch: bool = setting(False, "a switch")
    toggle: bool = setting(True, "on or off")
    values: tuple[float, ...] | None = setting(None, "comma list", parse=comma_separated(float),
                                               check=POSITIVE)
    hidden: int = setting(3, "not a flag", flag=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit > self.steps:
            raise ConfigError(f"--limit {self.limit} is more than --steps {self.steps}")


PRESETS = {"default": {}, "long": {"steps": 100, "rate": 0.9}}


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser()
    add_preset_flag(result, PRESETS)
    add_flags(result, Example)
    return result


def parse(*flags: str) -> Example:
    return from_args(Example, parser().parse_args(list(flags)), PRESETS)


def test_flags_come_from_the_fields_with_their_types():
    config = parse("--steps", "5", "--sizes", "3", "4", "--limit", "2", "--switch",
                   "--toggle", "off", "--values", "0.5,2", "--name", "b")
    assert config == Example(steps=5, sizes=(3, 4), limit=2, switch=True, toggle=False,
                             values=(0.5, 2.0), name="b")
    assert parse() == Example()
    dests = {action.dest for action in parser()._actions}
    assert "hidden" not in dests and "steps" in dests


def test_given_flags_beat_the_preset_which_beats_the_defaults():
    assert parse("--preset", "long") == Example(steps=100, rate=0.9)
    assert parse("--preset", "long", "--steps", "7") == Example(steps=7, rate=0.9)
    assert parse("--steps", "7", "--preset", "long") == Example(steps=7, rate=0.9)
    args = parser().parse_args(["--preset", "long"])
    from_args(Example, args, PRESETS)
    assert args.steps == 100  # the namespace records the values used


@pytest.mark.parametrize(("flags", "message"), [
    (["--steps", "0"], "--steps"), (["--steps", "1.5"], "an integer"),
    (["--rate", "1"], "[0, 1)"), (["--rate", "nan"], "--rate"), (["--name", "c"], "--name"),
    (["--sizes", "1", "-2"], "--sizes"), (["--toggle", "yes"], "on or off"),
    (["--values", "1,x"], "--values"), (["--preset", "nope"], "--preset"),
])
def test_bad_flags_are_argparse_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_instances_are_validated_too():
    with pytest.raises(ConfigError, match="--rate 2"):
        Example(rate=2.0)
    with pytest.raises(ConfigError, match="--sizes"):
        Example(sizes=(1, 0))
    with pytest.raises(ConfigError, match="--limit 20 is more than --steps 10"):
        parse("--limit", "20")
    assert Example(sizes=(5,)).to_dict()["sizes"] == [5]  # JSON-ready


def test_figure1_presets_are_valid_and_the_default_is_the_paper():
    for values in figure1.PRESETS.values():
        figure1.Figure1Config(**values)
    assert figure1.Figure1Config().steps == figure1.PAPER["steps"]


def test_seed_streams_are_figure1s():
    assert figure1.SEEDS(0) == {"init": 0, "data": 1, "population": 2}
    assert figure1.SEEDS(4) == {"init": 12, "data": 13, "population": 14}
    streams = SeedStreams("a", "b")
    assert streams(3) == {"a": 6, "b": 7}
    first = torch.rand(3, generator=streams.generator(3, "b"))
    assert torch.equal(first, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    assert indexed_seed(2, 5) == 2 * 1_000_003 + 5
    with pytest.raises(ValueError):
        SeedStreams("a", "a")


def test_checkpoints_refuse_other_settings_in_one_line(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    fingerprint = {"lr": 0.1, "recipe": {"dropout": 0.2, "lrn": True}, "sizes": [1, 2]}
    save_checkpoint(path, fingerprint, {"step": 3, "weights": torch.ones(2)})
    names = sorted(p.name for p in path.parent.iterdir())  # no temporaries
    assert names == ["checkpoint.pt", "checkpoint.pt.sha256"]
    state = load_checkpoint(path, fingerprint)
    assert state["step"] == 3 and torch.equal(state["weights"], torch.ones(2))
    changed = {**fingerprint, "lr": 0.2, "recipe": {"dropout": 0.3, "lrn": True}}
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(path, changed)
    message = str(error.value)
    assert "\n" not in message
    assert "lr: checkpoint 0.1, now 0.2" in message
    assert "recipe.dropout: checkpoint 0.2, now 0.3" in message and "lrn" not in message
    save_tensors(path, {"format": 99})
    with pytest.raises(CheckpointMismatchError, match="format"):
        load_checkpoint(path, fingerprint)


def test_resume_from_deletes_unless_resuming(tmp_path):
    path = tmp_path / "checkpoint.pt"
    assert not resume_from(path, True)
    save_checkpoint(path, {}, {})
    assert resume_from(path, True) and path.exists()
    assert not resume_from(path, False) and not path.exists()


class Payload:
    """Not a tensor: loading it would run code, so tensor files refuse it."""


def test_tensor_files_are_loaded_as_data_only(tmp_path):
    path = tmp_path / "evil.pt"
    save_tensors(path, {"object": Payload()})
    with pytest.raises(DamagedFileError, match=r"weights_only=True"):
        load_tensors(path)


def test_metadata_records_versions_load_and_wall_time():
    metadata = RunMetadata()
    environment = metadata.environment()
    assert {"python", "torch", "numpy", "platform", "cpu_count", "threads"} <= set(environment)
    finished = metadata.finish()
    assert finished["wall_seconds"] >= 0
    assert len(finished["load_average_at_start"]) == len(finished["load_average_at_end"]) == 3
    json.dumps({**environment, **finished})


def test_session_turns_errors_into_exit_codes(capsys, tmp_path):
    from batchnorm.data import DataError

    args = argparse.Namespace(out=str(tmp_path / "x"), data_dir=None, device="cpu", threads=1,
                              resume=False, no_progress=True)

    def fail(error):
        def body(session):
            raise error

        return body

    threads = torch.get_num_threads()
    assert run_experiment("prog", args, fail(ConfigError("--x 1: bad"))) == 2
    assert capsys.readouterr().err == "prog: error: --x 1: bad\n"
    assert run_experiment("prog", args, fail(DataError("no data"))) == 1
    assert run_experiment("prog", args, lambda session: session.options.threads + 6) == 7
    assert torch.get_num_threads() == threads  # restored


def test_device_names():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_summary_lines(capsys, tmp_path):
    print_summary("run: done", ["accuracy 97%"], tmp_path / "report.md",
                  [("BN is faster", "supported"), ("BN is slower", "not supported"),
                   ("BN is both", "mixed")])
    out = capsys.readouterr().out.splitlines()
    assert out == ["run: done", "  accuracy 97%", "      supported: BN is faster",
                   "  not supported: BN is slower", "          mixed: BN is both",
                   f"  report: {tmp_path / 'report.md'}"]


def test_plots_draw_mean_and_seed_band(tmp_path):
    drawn = {}

    def draw(figure):
        axis = figure.add_subplot()
        mean_band(axis, [1, 2, 3], np.array([[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]), "tab:red",
                  "two seeds")
        mean_band(axis, [1, 2, 3], np.array([[0.5, 0.6, 0.7]]), label="one seed")
        drawn["lines"] = [line.get_ydata().tolist() for line in axis.get_lines()]
        drawn["bands"] = len(axis.collections)

    save_plot(tmp_path / "plot.png", (4, 3), draw)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["lines"][0] == pytest.approx([0.2, 0.3, 0.4]) and drawn["bands"] == 1
