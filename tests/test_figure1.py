"""``batchnorm reproduce figure1``: outputs, config, resume after a kill, flags, and real MNIST.

The fast tests inject a tiny synthetic dataset (28x28 binary-ish prototypes with
noise, 10 classes) through ``run(args, dataset=...)``, so they need no MNIST.
"""

import argparse
import csv
import json

import pytest
import torch

from batchnorm import cli
from batchnorm.data import Dataset
from batchnorm.experiments import figure1
from batchnorm.experiments.figure1 import METRIC_COLUMNS, BatchStream, summarize

RUNTIME_FLAGS = {"data_dir", "out", "device", "threads", "resume", "no_progress", "sweep_lr",
                 "sweep_values", "preset"}


def synthetic_dataset(train: int = 600, test: int = 200, seed: int = 0) -> Dataset:
    """Each class a random prototype image; examples flip 10% of its pixels."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 28, 28, generator=generator) > 0.8

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        flips = torch.rand(n, 28, 28, generator=generator) < 0.1
        images = (prototypes[labels] ^ flips).to(torch.uint8) * 255
        return images, labels

    train_images, train_labels = sample(train)
    test_images, test_labels = sample(test)
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels,
                   tuple(str(i) for i in range(10)), "synthetic (tests)")


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic_dataset()


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    figure1.add_arguments(parser)
    return parser.parse_args(["--no-progress", "--device", "cpu", *flags])


def run(tmp_path, data, *flags: str, name: str = "run", **kwargs) -> int:
    return figure1.run(parse("--out", str(tmp_path / name), *flags), dataset=data, **kwargs)


SHORT = ("--steps", "24", "--eval-every", "3", "--checkpoint-every", "6",
         "--population-batches", "5", "--lr", "0.5")


def test_outputs_exist_and_parse(tmp_path, data):
    assert run(tmp_path, data, *SHORT) == 0
    out = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "figure1.png", "report.md", "summary.json",
                 "checkpoint.pt"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert len(rows) == 2 * 8  # two networks, an evaluation every 3 of 24 steps
    assert {row["arm"] for row in rows} == {"baseline", "bn"}
    for row in rows:
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert float(row["p15"]) <= float(row["p50"]) <= float(row["p85"])
    summary = json.loads((out / "summary.json").read_text())
    for arm in ("baseline", "bn"):
        assert 0.0 <= summary[arm]["final_test_accuracy"] <= summary[arm]["max_test_accuracy"]
    assert "steps_to_baseline_final" in summary["bn"]
    assert 0.0 <= summary["bn"]["final_test_accuracy_population_stats"] <= 1.0
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out / "figure1.png").shape
    assert width > 2 * height  # three panels side by side
    report = (out / "report.md").read_text()
    for heading in ("## Setup", "## Learning rate", "## Results", "## Wall time",
                    "figure1.png", "population statistics"):
        assert heading in report


def test_config_records_every_choice(tmp_path, data):
    assert run(tmp_path, data, *SHORT, "--seeds", "2", "--init-std", "0.2") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    parser = argparse.ArgumentParser()
    figure1.add_arguments(parser)
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    settings = config["settings"]
    # Every flag is recorded; every flag that changes the numbers is a setting.
    assert dests <= set(config["flags"])
    assert dests - RUNTIME_FLAGS <= set(settings)
    assert settings["seeds"] == 2 and settings["init_std"] == 0.2 and settings["lr"] == 0.5
    assert settings["eval_every"] == 3 and settings["checkpoint_every"] == 6
    for choice in ("optimizer", "lr", "init_std", "binarize_threshold", "eps", "bn_momentum",
                   "data_order", "evaluation", "percentiles", "population_statistics"):
        assert config["choices"][choice]
    assert config["lr_sweep"]["winner"] == figure1.Figure1Config().lr
    assert len(config["lr_sweep"]["values"]) >= 4
    assert config["paper"]["batch_size"] == 60 and config["paper"]["steps"] == 50_000
    assert config["timing"]["train_s"] > 0
    assert config["runtime"]["dataset_source"] == "synthetic (tests)"


def test_defaults_are_the_papers():
    args = parse()
    config = figure1.config_from_args(args)
    assert (config.steps, config.batch_size, config.hidden) == (50_000, 60, (100, 100, 100))
    assert config.eval_every == 500  # 100 evaluation points
    assert config.lr == figure1.LR_SWEEP["winner"]
    assert args.out == "runs/figure1" and args.dataset == "mnist"


@pytest.mark.parametrize("extra", [(), ("--seeds", "2", "--momentum", "0.9")])
def test_resume_after_kill_is_bit_for_bit(tmp_path, data, extra):
    assert run(tmp_path, data, *SHORT, *extra, name="whole") == 0
    # Killed at step 14: the last checkpoint is step 12, so steps 13-14 are redone.
    with pytest.raises(figure1.SimulatedKillError):
        run(tmp_path, data, *SHORT, *extra, name="killed", stop_after=14)
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 12
    assert not (tmp_path / "killed" / "metrics.csv").exists()
    assert run(tmp_path, data, *SHORT, *extra, "--resume", name="killed") == 0
    whole, resumed = tmp_path / "whole", tmp_path / "killed"
    assert (resumed / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((resumed / "summary.json").read_text())
    for summary in (a, b):
        summary.pop("timing")
    assert a == b
    final_a = torch.load(whole / "checkpoint.pt", weights_only=True)
    final_b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for model_a, model_b in zip(final_a["models"], final_b["models"], strict=True):
        for key in model_a:
            assert torch.equal(model_a[key], model_b[key]), key
    assert final_b["timings"]["sessions"] == 2


def test_resume_of_a_finished_run_rewrites_the_same_outputs(tmp_path, data):
    assert run(tmp_path, data, *SHORT) == 0
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    assert run(tmp_path, data, *SHORT, "--resume") == 0
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before


def test_resume_with_other_settings_is_refused(tmp_path, data, capsys):
    with pytest.raises(figure1.SimulatedKillError):
        run(tmp_path, data, *SHORT, stop_after=7)
    capsys.readouterr()
    assert run(tmp_path, data, *SHORT, "--resume", "--init-std", "0.3") == 2
    error = capsys.readouterr().err
    assert "init_std" in error and "other settings" in error
    assert len(error.strip().splitlines()) == 1  # one line naming the changed setting


def test_fresh_run_does_not_continue_an_old_checkpoint(tmp_path, data):
    with pytest.raises(figure1.SimulatedKillError):
        run(tmp_path, data, *SHORT, stop_after=7)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(figure1.SimulatedKillError):
        run(tmp_path, data, *SHORT, stop_after=2)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--momentum", "1"], "--momentum"),
        (["--seeds", "0"], "--seeds"),
        (["--init-std", "0"], "--init-std"),
        (["--binarize-threshold", "1.5"], "--binarize-threshold"),
        (["--bn-layer", "mine"], "--bn-layer"),
        (["--device", "tpu"], "--device"),
        (["--dataset", "cifar"], "--dataset"),
        (["--eval-every", "5", "--checkpoint-every", "7"], "--checkpoint-every"),
        (["--steps", "10", "--eval-every", "20"], "--eval-every"),
        (["--unit", "100"], "--unit"),
        (["--batch-size", "1"], "--batch-size"),
        (["--sweep-lr", "--sweep-values", "0.1"], "--sweep-values"),
    ],
)
def test_bad_flags_give_clear_errors(flags, message, capsys):
    try:
        code = cli.main(["reproduce", "figure1", "--no-progress", *flags])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_clear_error(tmp_path, data, capsys):
    assert run(tmp_path, data, "--device", "cuda", *SHORT) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_lr_sweep_writes_its_result(tmp_path, data):
    code = run(tmp_path, data, "--sweep-lr", "--sweep-values", "0.1", "1", "0.3",
               "--steps", "12", "--eval-every", "3")
    assert code == 0
    result = json.loads((tmp_path / "run" / "lr_sweep" / "lr_sweep.json").read_text())
    assert result["values"] == [0.1, 0.3, 1.0]
    assert result["winner"] in result["values"]
    best = max(result["validation_accuracy"].values())
    assert result["validation_accuracy"][str(result["winner"])] == best
    assert (tmp_path / "run" / "lr_sweep" / "lr_sweep.md").is_file()
    assert not (tmp_path / "run" / "figure1.png").exists()


def test_batch_stream_draws_permutations_and_resumes():
    stream = BatchStream(10, 3, seed=1, device=torch.device("cpu"))
    epoch = torch.cat([stream.next() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 batches of 3 distinct examples, one left over
    state = stream.state_dict()
    ahead = [stream.next() for _ in range(5)]
    again = BatchStream(10, 3, seed=99, device=torch.device("cpu"))
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, [again.next() for _ in range(5)],
                                                 strict=True))


def test_plain_sgd_is_torch_sgd():
    for momentum in (0.0, 0.9):
        torch.manual_seed(0)
        a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        b.load_state_dict(a.state_dict())
        reference = torch.optim.SGD(a.parameters(), lr=0.3, momentum=momentum)
        ours = PlainSGD([(list(b.parameters()), 0.3)], momentum)
        for _ in range(4):
            x = torch.randn(8, 5)
            for model, optimizer in ((a, reference), (b, ours)):
                optimizer.zero_grad()
                model(x).square().sum().backward()
                optimizer.step()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(),
                                                     strict=True))


def test_steps_to_baseline_final():
    def rows(arm, accuracies):
        return [{"seed": 0, "arm": arm, "step": 10 * (i + 1), "accuracy": acc,
                 "train_loss": 1.0, "p15": -1.0, "p50": 0.0, "p85": 1.0}
                for i, acc in enumerate(accuracies)]

    summary = summarize(rows("baseline", [0.5, 0.7, 0.8, 0.9]) + rows("bn", [0.8, 0.9, 0.95, 0.96]),
                        {0: {"accuracy": 0.97, "p15": -1.0, "p50": 0.0, "p85": 1.0}})
    assert summary["bn"]["steps_to_baseline_final"] == 20
    assert summary["baseline"]["max_test_accuracy"] == 0.9
    assert summary["bn"]["final_test_accuracy_population_stats"] == 0.97
    never = summarize(rows("baseline", [0.9, 0.95]) + rows("bn", [0.5, 0.6]), {})
    assert never["bn"]["steps_to_baseline_final"] is None


@pytest.mark.slow
def test_bn_beats_the_baseline_on_real_mnist(tmp_path):
    """3000 steps of the real experiment (default lr): BN learns much faster (Figure 1a).

    At the default lr (the best for the baseline) the baseline catches up within a few
    thousand steps, so the claim tested is the speed: accuracy averaged over the
    evaluations, and the steps each network needs to reach 85%.
    """
    from batchnorm.data import DataError, load_dataset

    try:
        mnist = load_dataset("mnist", progress=False)
    except DataError as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"MNIST not available: {error}")
    assert run(tmp_path, mnist, "--steps", "3000", "--eval-every", "300",
               "--population-batches", "200") == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    curve = {arm: [float(r["test_accuracy"]) for r in rows if r["arm"] == arm]
             for arm in ("baseline", "bn")}
    steps = [int(r["step"]) for r in rows if r["arm"] == "bn"]

    def steps_to(arm: str, level: float) -> int:
        return next((s for s, a in zip(steps, curve[arm], strict=True) if a >= level), 10**9)

    mean = {arm: sum(values) / len(values) for arm, values in curve.items()}
    assert mean["bn"] > mean["baseline"] + 0.02
    assert steps_to("bn", 0.85) < steps_to("baseline", 0.85)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bn"]["final_test_accuracy"] > 0.95
    assert summary["bn"]["final_test_accuracy_population_stats"] > 0.95
