"""The claims' shared training machinery: batches, lr grids, selection on validation, the
"trains" criterion, the stacked MLP grid against standalone training, the convnet run;
and the end-to-end quick run of the five training claims through the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from batchnorm.experiments.claims import training as T
from batchnorm.experiments.claims.base import ClaimContext
from batchnorm.experiments.claims.data import Split
from batchnorm.models.mlp import MLP


def _split(n=240, flat=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    if not flat:
        x = x.view(n, 1, 28, 28)
    return Split("synthetic", x, y, x[:60], y[:60], x[60:120], y[60:120])


def _row(lr, seed, val, finite=True, test=0.5):
    return {"lr": lr, "seed": seed, "val": val, "test": test, "finite": finite}


def test_lr_grid_log_spaced():
    assert T.lr_grid(0.01, 1.0, 2) == (0.01, 0.03162, 0.1, 0.3162, 1.0)
    assert T.lr_grid(1.0, 1.0, 3) == (1.0,)
    with pytest.raises(ValueError):
        T.lr_grid(1.0, 0.1, 2)


def test_batch_indices_are_epochs_of_permutations():
    index = T.batch_indices(10, 3, 7, seed=4)
    assert index.shape == (7, 3)
    # 3 batches per epoch (one example left over): each epoch's 9 indices are distinct
    for epoch in range(2):
        chunk = index[3 * epoch:3 * epoch + 3].reshape(-1)
        assert len(set(chunk.tolist())) == 9
    assert torch.equal(index, T.batch_indices(10, 3, 7, seed=4))
    assert not torch.equal(index, T.batch_indices(10, 3, 7, seed=5))
    with pytest.raises(ValueError):
        T.batch_indices(2, 3, 1, seed=0)


def test_best_lr_is_seed_mean_of_validation_ties_to_smaller():
    rows = [_row(0.1, 0, 0.90, test=0.1), _row(0.1, 1, 0.80, test=0.1),
            _row(1.0, 0, 0.84, test=0.99), _row(1.0, 1, 0.84, test=0.99),
            _row(10.0, 0, 0.85), _row(10.0, 1, 0.85)]
    assert T.best_lr(rows) == 0.1  # 0.85 tie with 10: the smaller rate; test never read
    assert T.best_lr(rows, metric="test") == 1.0
    assert T.per_seed(rows, "val")[1.0] == [0.84, 0.84]
    with pytest.raises(ValueError):
        T.best_lr([])


def test_trains_and_max_trainable_lr():
    rows = [_row(0.1, 0, 0.90), _row(1.0, 0, 0.95), _row(10.0, 0, 0.86),
            _row(100.0, 0, 0.85), _row(1000.0, 0, 0.99, finite=False),
            _row(0.1, 1, 0.10), _row(1.0, 1, 0.10)]
    assert T.trains(rows[2], 0.95)  # 0.86 >= 0.9 * 0.95 = 0.855
    assert not T.trains(rows[3], 0.95)
    assert not T.trains(rows[4], 0.5)  # not finite
    # best of seed 0 is 0.99 (non-finite run counts for the best, never trains): 0.891
    assert T.max_trainable_lr(rows, 0) == 1.0
    assert T.max_trainable_lr(rows, 1) == 1.0  # both equal the best
    with pytest.raises(ValueError):
        T.max_trainable_lr(rows, 7)


def test_percent_formats_mean_and_interval():
    assert T.percent([0.5]) == "50.00"
    text = T.percent([0.9, 0.92])
    assert text.startswith("91.00 [") and text.endswith("]")


def test_mlp_grid_network_equals_standalone_sgd(one_thread):
    """Network k of the stack is the MLP its seed and scale give, trained by SGD alone."""
    split = _split()
    sizes = (784, 16, 16, 10)
    grid = T.MLPGrid.product(lrs=(0.5, 0.05), seeds=(0, 1), scales=(1.0, 3.0), sizes=sizes,
                             batch_norm=True, steps=5, batch_size=20, train_eval=30)
    results = T.train_mlp_grid(grid, split)
    assert [(r["lr"], r["scale"], r["seed"]) for r in results] == list(
        zip(grid.lrs, grid.scales, grid.seeds, strict=True))
    k = 5  # lr 0.05, scale 1, seed 1
    lr, scale, seed = grid.lrs[k], grid.scales[k], grid.seeds[k]
    mlp = MLP(sizes, batch_norm=True, init_std=grid.init_std * scale,
              generator=T.SEEDS.generator(seed, "init"), bn_layer=torch.nn.BatchNorm1d).double()
    x, y = split.train_x.double(), split.train_y
    for batch in T.batch_indices(len(y), 20, 5, seed):  # plain SGD (torch.optim's first
        mlp.zero_grad()                                 # step imports dynamo: seconds)
        torch.nn.functional.cross_entropy(mlp(x[batch]), y[batch]).backward()
        with torch.no_grad():
            for param in mlp.parameters():
                param -= lr * param.grad
    mlp.eval()
    with torch.no_grad():
        val = (mlp(split.val_x.double()).argmax(1) == split.val_y).double().mean().item()
        test = (mlp(split.test_x.double()).argmax(1) == split.test_y).double().mean().item()
        train = (mlp(x[:30]).argmax(1) == y[:30]).double().mean().item()
    assert results[k]["val"] == pytest.approx(val, abs=1 / 60 + 1e-9)
    assert results[k]["test"] == pytest.approx(test, abs=1 / 60 + 1e-9)
    assert results[k]["train_acc"] == pytest.approx(train, abs=1 / 30 + 1e-9)
    assert all(r["finite"] and r["train_loss"] > 0 for r in results)


def test_mlp_grid_validates():
    with pytest.raises(ValueError, match="one of each"):
        T.MLPGrid(sizes=(784, 10), batch_norm=False, lrs=(1.0,), seeds=(0, 1), scales=(1.0,),
                  steps=1)
    with pytest.raises(ValueError, match="activation"):
        T.MLPGrid(sizes=(784, 10), batch_norm=False, lrs=(1.0,), seeds=(0,), scales=(1.0,),
                  steps=1, activation="swish")


def test_convnet_run_is_reproducible_and_stops_on_divergence(one_thread):
    split = _split(flat=False)
    run = T.ConvRun(batch_norm=True, lr=0.05, seed=3, steps=6, batch_size=16, channels=(2, 4),
                    hidden=8, dropout=0.5, train_eval=40)
    first, second = T.train_convnet(run, split), T.train_convnet(run, split)
    assert first == second
    assert first["finite"] and 0 <= first["train_acc"] <= 1
    diverged = T.train_convnet(T.ConvRun(batch_norm=False, lr=1e30, seed=0, steps=50,
                                         batch_size=16, channels=(2, 4), hidden=8,
                                         train_eval=0), split)
    assert not diverged["finite"] and diverged["train_loss"] is None
    assert diverged["train_acc"] is None


def test_memo_reuses_a_grid(tmp_path, one_thread):
    context = ClaimContext("x", tmp_path, torch.device("cpu"), progress=False)
    context.datasets["split:mnist:None:5000:None:True"] = _split()
    grid = T.MLPGrid.product(lrs=(0.1,), seeds=(0,), sizes=(784, 8, 10), batch_norm=False,
                             steps=3, batch_size=10, train_eval=0)
    first = T.mlp_grid(context, T.DataSpec(), grid, "grid")
    context.datasets.clear()  # a cached grid needs no data
    assert T.mlp_grid(context, T.DataSpec(), grid, "grid") == first
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.slow
def test_training_claims_quick_end_to_end(tmp_path):
    from batchnorm.cli import main

    claims = ("higher-lr", "init", "saturating", "regularizer", "bjorck")
    code = main(["reproduce", "claims", "--preset", "quick", "--only", ",".join(claims),
                 "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    found = {entry["id"]: entry for entry in summary["claims"]}
    assert set(found) == set(claims)
    for entry in found.values():
        assert entry["verdict"] in ("supported", "not supported", "mixed")
        assert entry["seeds"] == 2 and math.isfinite(entry["value"])
        assert None not in entry["interval"]
    report = (tmp_path / "report.md").read_text()
    for name in ("higher-lr/mlp_val_vs_lr.png", "higher-lr/conv_val_vs_lr.png",
                 "init/test_accuracy_vs_init_scale.png", "saturating/val_accuracy_vs_lr.png",
                 "regularizer/train_test_accuracy.png", "bjorck/mlp_test_vs_lr.png",
                 "bjorck/conv_test_vs_lr.png"):
        assert (tmp_path / name).is_file() and f"]({name})" in report
    # bjorck reads higher-lr's sweeps: no cache entries beyond the other claims' own
    cached = len(list(Path(tmp_path, "cache").iterdir()))
    quick = {"mlp": 2, "conv": 2 * 3 * 2, "init": 2, "saturating": 2, "regularizer": 4 * 2}
    assert cached == sum(quick.values())
