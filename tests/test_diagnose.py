"""diagnose: planted defects are flagged, a healthy trained model is not, the model is untouched;
the ``batchnorm diagnose`` command."""

import copy
import json

import pytest
import torch
from torch import nn

import batchnorm
from _datasets import dataset_or_skip
from batchnorm import BatchNorm1d, BatchNorm2d, diagnose
from batchnorm.cli import main
from batchnorm.diagnose import Limits, statistics_layers

DIM, CLASSES = 12, 3


def _data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centers = torch.linspace(-2, 2, CLASSES * DIM).reshape(CLASSES, DIM)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    x = centers[y] + torch.randn(n, DIM, generator=generator) * 1.5 + 3.0
    return x, y


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(DIM, 16, bias=False), BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 8, bias=False), BatchNorm1d(8, estimator="population"), nn.ReLU(),
        nn.Linear(8, CLASSES),
    )


@pytest.fixture(scope="module")
def healthy(one_thread) -> nn.Sequential:
    """A small BN MLP trained briefly on synthetic blobs (lr decayed, so the running
    statistics describe the final weights)."""
    torch.manual_seed(0)
    model = _mlp()
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = 300
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * (1 - step / steps)
        x, y = _data(64, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def _batches(count: int = 20, size: int = 64, seed: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [_data(size, generator)[0] for _ in range(count)]


def test_a_healthy_trained_model_has_no_findings(healthy):
    result = diagnose(healthy, _batches())
    assert [d.name for d in result] == ["1", "4", "7"]
    assert [d.kind for d in result] == ["BatchNorm1d"] * 3
    assert result.flagged == [], result.table()
    for layer in result:
        assert layer.shift_max is not None and layer.shift_max < Limits().shift
        assert layer.fresh_samples == 20 * 64
        assert 0 <= layer.var_log_mean < 0.2
    assert "0 of 3 BN layers flagged (20 batches)" in str(result)
    # the model was trained: its accuracy is far above chance (the check means something)
    x, y = _data(512, torch.Generator().manual_seed(3))
    assert (healthy(x).argmax(1) == y).float().mean() > 0.8


def test_planted_defects_are_flagged(healthy):
    model = copy.deepcopy(healthy)
    first, second, third = model[1], model[4], model[7]
    with torch.no_grad():
        first.running_mean[3] += 3 * first.running_var[3].sqrt()  # shifted running mean
        first.weight[5] = 0.0  # a dead channel
        second.running_var[2] = 1e-7  # var < eps
        first.skipped_updates.fill_(2)
    third.reset_running_stats()  # never trained
    result = {d.name: d for d in diagnose(model, _batches())}
    findings = {name: " | ".join(d.findings) for name, d in result.items()}
    assert "running mean off by up to" in findings["1"] and "(channel 3)" in findings["1"]
    assert 2.5 < result["1"].shift_max < 3.5
    assert result["1"].dead_channels == [5] and "1 dead channels" in findings["1"]
    assert "2 non-finite batches skipped" in findings["1"]
    assert result["4"].tiny_var_channels == [2] and "below eps: 2" in findings["4"]
    assert "running variance off" in findings["4"]  # fresh var / 1e-7 is huge
    assert "never trained" in findings["7"]
    assert result["1"].var_factor_max < Limits().var_factor  # only what was planted
    assert "(channel 2)" in findings["4"]  # the tiny variance, seen from every side


def test_few_batches_and_small_population_counters(one_thread):
    model = nn.Sequential(nn.Linear(4, 3), BatchNorm1d(3, estimator="population"),
                          nn.Linear(3, 3), nn.BatchNorm1d(3))
    for _ in range(3):
        model(torch.randn(8, 4))
    result = diagnose(model, [torch.randn(8, 4)], limits=Limits(shift=1e9, var_factor=1e9))
    assert "statistics from only 3 batches" in result.layers[0].findings
    assert "population statistics from only 24 values per channel" in result.layers[0].findings
    assert result.layers[0].population_samples == 24
    assert result.layers[1].findings == ["statistics from only 3 batches"]


def test_the_model_is_left_exactly_as_found(healthy):
    model = copy.deepcopy(healthy)
    model.train()
    model[4].eval()  # a mixed state must come back too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    skipped = model[1].skipped_updates.clone()
    modes = [m.training for m in model.modules()]
    diagnose(model, _batches(3))
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert torch.equal(model[1].skipped_updates, skipped)
    assert [m.training for m in model.modules()] == modes


def test_a_failing_batch_leaves_the_model_as_found(healthy):
    model = copy.deepcopy(healthy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        diagnose(model, [torch.randn(8, DIM), torch.randn(8, DIM + 1)])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training and not any(m._forward_pre_hooks for m in model.modules())


def test_layers_are_found_by_their_buffers():
    class Frozen(nn.Module):  # not a _BatchNorm subclass: statistics as plain buffers
        def __init__(self, c: int) -> None:
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))
            self.register_buffer("weight", torch.ones(c))
            self.eps = 1e-5

        def forward(self, x):
            shape = (1, -1, 1, 1)
            scale = self.weight / (self.running_var + self.eps).sqrt()
            return (x - self.running_mean.view(shape)) * scale.view(shape)

    model = nn.Sequential(nn.Conv2d(1, 2, 3), BatchNorm2d(2), Frozen(2),
                          nn.BatchNorm2d(2, track_running_stats=False))
    assert [name for name, _ in statistics_layers(model)] == ["1", "2"]
    model(torch.randn(4, 1, 6, 6))
    result = diagnose(model, [torch.randn(4, 1, 6, 6)])
    assert [d.kind for d in result] == ["BatchNorm2d", "Frozen"]
    assert result.layers[1].batches_tracked is None and result.layers[1].fresh_samples == 64


def test_as_data_and_table(healthy):
    result = diagnose(healthy, _batches(2))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["batches"] == 2 and len(data["layers"]) == 3
    assert set(data["layers"][0]) >= {"name", "shift_max", "var_factor_max", "findings"}
    lines = str(result).splitlines()
    assert lines[0].split()[:3] == ["layer", "type", "C"] and len(lines) == 3 + 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="no layer with running statistics"):
        diagnose(nn.Linear(2, 2), [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="no batches"):
        diagnose(nn.BatchNorm1d(2), [])
    with pytest.raises(ValueError, match="num_batches"):
        diagnose(nn.BatchNorm1d(2), [torch.randn(2, 2)], num_batches=0)
    with pytest.raises(TypeError, match="a batch must be a Tensor"):
        diagnose(nn.BatchNorm1d(2), ["x"])
    assert batchnorm.diagnose is diagnose


def test_cli_bad_file(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["diagnose", str(missing), "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    assert main(["diagnose", str(garbage), "--dataset", "mnist"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    state = tmp_path / "state.pt"
    torch.save(nn.BatchNorm1d(3).state_dict(), state)
    assert main(["diagnose", str(state), "--dataset", "mnist"]) == 2
    assert "not a model" in capsys.readouterr().err


def test_cli_model_that_fails_on_the_images(tmp_path, capsys):
    dataset_or_skip("mnist")
    path = tmp_path / "wrong.pt"
    torch.save(nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4)), path)  # wants 10 inputs
    assert main(["diagnose", str(path), "--dataset", "mnist", "--batches", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrong.pt: RuntimeError" in err


def test_cli_bad_dataset_name(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.BatchNorm1d(4)), path)
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", str(path), "--dataset", "cifar"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    damaged = tmp_path / "data" / "mnist"  # files that fail verification: a DataError
    damaged.mkdir(parents=True)
    (damaged / "train-images-idx3-ubyte.gz").write_bytes(b"damaged")
    code = main(["diagnose", str(path), "--dataset", "mnist", "--data-dir",
                 str(tmp_path / "data"), "--no-download"])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_on_mnist(tmp_path, capsys, one_thread):
    """End to end on real data (outside CI, skipped when MNIST cannot be loaded)."""
    dataset_or_skip("mnist")
    path = tmp_path / "model.pt"
    model = nn.Sequential(nn.Conv2d(1, 4, 3), BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10))
    torch.save(model, path)  # never trained: flagged
    assert main(["diagnose", str(path), "--dataset", "mnist", "--batches", "2",
                 "--batch-size", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batches"] == 2 and "never trained" in " ".join(data["layers"][0]["findings"])
    assert main(["diagnose", str(path), "--dataset", "mnist", "--batches", "1"]) == 0
    assert "1 of 1 BN layers flagged" in capsys.readouterr().out


def test_the_other_layer_kinds_of_the_package(one_thread):
    """Frozen BN, Batch Renorm and Ghost BN (when present) get a row each, by their buffers."""
    frozen, renorm, ghost = (batchnorm.FrozenBatchNorm2d, batchnorm.BatchRenorm2d,
                             batchnorm.GhostBatchNorm2d)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), frozen(3), renorm(3), ghost(3, 4))
    for _ in range(12):
        model(torch.randn(8, 1, 6, 6))
    result = diagnose(model, [torch.randn(8, 1, 6, 6) for _ in range(3)])
    assert [d.kind for d in result] == ["FrozenBatchNorm2d", "BatchRenorm2d",
                                        "GhostBatchNorm2d"]
    assert result.layers[1].batches_tracked == 12 and result.layers[2].batches_tracked == 12
    assert all(d.fresh_samples == 3 * 8 * 16 for d in result)
