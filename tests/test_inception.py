"""The Inception experiment (Figures 2-3): model, recipe flags, ensemble, resume, CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import pytest
import torch
from torch import nn

from batchnorm.experiments import inception
from batchnorm.experiments.inception import (
    ABLATIONS,
    BASE_LR,
    DISTORTIONS,
    MAIN,
    PLATEAU_GAIN,
    PRESETS,
    InceptionExperimentConfig,
    Recipe,
    RunSpec,
    Scale,
    ablation_recipes,
    average_probabilities,
    batch_order,
    build_model,
    build_optimizer,
    distort,
    ensemble_of_best,
    evaluation_steps,
    group_seeds,
    judge,
    learning_rate,
    plateau_gain,
    run_numbers,
    steps_to_reach,
    synthetic_splits,
    train_run,
    variant_recipe,
)
from batchnorm.experiments.inception import train as train_module
from batchnorm.experiments.runner import CheckpointMismatchError
from batchnorm.layers import BatchNorm1d, BatchNorm2d
from batchnorm.models.inception import InceptionConfig, SmallInception, count_parameters

TINY = Scale(width=0.25, steps=8, evaluations=4, eval_size=64, train_limit=512,
             final_eval_limit=128)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_splits():
    return synthetic_splits(train=512, val=128, test=128)


# --- model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
def test_model_shapes_depth_and_parameter_counts(batch_norm):
    model = SmallInception(InceptionConfig(batch_norm=batch_norm))
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert model.depth == 14  # stem + 4 modules x 3 (double 3x3 path) + classifier
    assert model.feature_channels == 136
    # Pinned so that an architecture change is a conscious one (the report quotes them).
    assert count_parameters(model) == (81474 if batch_norm else 80842)
    assert count_parameters(SmallInception(InceptionConfig(batch_norm=True, width=0.5))) == 21086


def test_bn_before_every_nonlinearity_and_no_conv_bias():
    model = SmallInception(InceptionConfig(batch_norm=True))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert len(convs) == len(bns) == 1 + 7 * 4
    assert all(conv.bias is None for conv in convs)
    plain = SmallInception(InceptionConfig(batch_norm=False))
    assert not any(isinstance(m, BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_double_3x3_replaces_5x5():
    model = SmallInception(InceptionConfig())
    sizes = {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert sizes == {(1, 1), (3, 3)}


def test_model_options():
    model = SmallInception(InceptionConfig(activation="sigmoid", lrn=True, dropout=0.3,
                                           head_bn1d=True, batch_norm=True))
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    assert model.dropout.p == 0.3
    assert isinstance(model.head_bn, BatchNorm1d)
    with pytest.raises(ValueError):
        InceptionConfig(activation="tanh")


def test_init_scale_multiplies_conv_weights():
    torch.manual_seed(0)
    a = SmallInception(InceptionConfig())
    torch.manual_seed(0)
    b = SmallInception(InceptionConfig(init_scale=1.5))
    assert torch.allclose(b.stem[0][0].weight, 1.5 * a.stem[0][0].weight)


# --- recipe flags ----------------------------------------------------------------------------


def test_shard_shuffling_keeps_batches_inside_fixed_shards():
    batches = batch_order(1000, 10, epoch=0, seed=0, shuffle="shards", shard_size=100)
    assert batches.shape == (100, 10)
    shard_of = batches // 100
    assert (shard_of == shard_of[:, :1]).all()  # a batch never mixes shards
    visited = shard_of[::10, 0].tolist()  # 10 batches per shard, shards visited in order
    assert sorted(visited) == list(range(10)) and visited != list(range(10))
    assert not torch.equal(batches, batch_order(1000, 10, 1, 0, "shards", 100))  # per epoch
    assert torch.equal(batches, batch_order(1000, 10, 0, 0, "shards", 100))  # deterministic


def test_full_shuffling_mixes_the_whole_set():
    batches = batch_order(1000, 10, epoch=0, seed=0, shuffle="full", shard_size=100)
    assert sorted(batches.flatten().tolist()) == list(range(1000))
    assert ((batches // 100) != (batches // 100)[:, :1]).any(dim=1).float().mean() > 0.9
    with pytest.raises(ValueError):
        batch_order(1000, 10, 0, 0, "nope", 100)


def test_schedule_anneals_to_zero_and_keeps_the_faster_decay():
    total = 1000
    for speed in (1.0, 6.0):
        recipe = Recipe(lr=0.1, lr_decay_speed=speed)
        values = [learning_rate(recipe, t, total) for t in range(total)]
        assert values[0] == pytest.approx(0.1)
        assert values[-1] == pytest.approx(0.0, abs=1e-12)  # the last step's lr is 0
        assert values[-2] < 1e-5 * 0.1
        assert all(a >= b for a, b in itertools.pairwise(values))  # monotone
    slow, fast = Recipe(lr=0.1), Recipe(lr=0.1, lr_decay_speed=6.0)
    # Under the same cosine envelope the x6 exponential factor stays 0.5 ** (p * 5 / 3) lower.
    for t in (100, 500, 900):
        ratio = learning_rate(fast, t, total) / learning_rate(slow, t, total)
        assert ratio == pytest.approx(0.5 ** ((t / (total - 1)) * 5 / 3))
    assert learning_rate(slow, 500, total) == pytest.approx(
        0.1 * 0.5 ** (500 / 999 / 3) * (1 + math.cos(math.pi * 500 / 999)) / 2)


def test_distortion_strengths():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28) * 0.5 + 0.25
    assert torch.equal(distort(images, DISTORTIONS["none"], generator), images)
    change = {}
    for name in ("light", "strong"):
        out = distort(images, DISTORTIONS[name], torch.Generator().manual_seed(1))
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        change[name] = (out - images).abs().mean().item()
    assert 0 < change["light"] < change["strong"]


def test_shift_moves_whole_pixels_within_bound():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14, 14] = 1.0
    shift_only = DISTORTIONS["strong"].__class__(brightness=0.0, contrast=0.0, shift=2)
    for seed in range(10):
        out = distort(image.repeat(8, 1, 1, 1), shift_only, torch.Generator().manual_seed(seed))
        for item in out:
            row, col = divmod(int(item.flatten().argmax()), 28)
            assert abs(row - 14) <= 2 and abs(col - 14) <= 2 and item.sum() == 1


def test_lrn_dropout_and_weight_decay_reach_the_model_and_optimizer():
    recipe = Recipe(lrn=True, dropout=0.25, weight_decay=3e-4, batch_norm=True)
    model = build_model(recipe, TINY)
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    assert model.dropout.p == 0.25
    no_lrn = build_model(recipe.replace(lrn=False), TINY)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in no_lrn.modules())
    optimizer = build_optimizer(model, recipe)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 3e-4 and no_decay["weight_decay"] == 0.0
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    bn_params = {id(p) for m in model.modules() if isinstance(m, BatchNorm2d)
                 for p in m.parameters()}
    assert conv_weights <= {id(p) for p in decay["params"]}
    assert bn_params <= {id(p) for p in no_decay["params"]}
    assert optimizer.defaults["momentum"] == 0.9


def test_variants_follow_the_paper():
    base = variant_recipe("inception")
    assert base.lr == BASE_LR and not base.batch_norm
    assert variant_recipe("bn-baseline") == base.replace(batch_norm=True)
    x5, x30 = variant_recipe("bn-x5"), variant_recipe("bn-x30")
    assert x5.lr == pytest.approx(5 * BASE_LR) and x30.lr == pytest.approx(30 * BASE_LR)
    assert (x5.dropout, x5.lrn, x5.shuffle, x5.distortion) == (0.0, False, "full", "light")
    assert x5.weight_decay == pytest.approx(base.weight_decay / 5)
    assert x5.lr_decay_speed == 6 * base.lr_decay_speed
    assert variant_recipe("bn-x5-sigmoid") == x5.replace(activation="sigmoid")
    assert variant_recipe("inception-sigmoid") == base.replace(activation="sigmoid")
    with pytest.raises(ValueError):
        variant_recipe("nope")


def _differences(a: Recipe, b: Recipe) -> set[str]:
    return {k for k, v in a.to_dict().items() if v != b.to_dict()[k]}


def test_controls_differ_from_bn_x5_only_in_bn_and_lr():
    x5, x30 = variant_recipe("bn-x5"), variant_recipe("bn-x30")
    control = variant_recipe("inception-changes")
    assert _differences(control, x5) == {"batch_norm", "lr"}
    assert not control.batch_norm and control.lr == BASE_LR
    # It has all six regularization changes that bn-x5 has over the baseline.
    assert _differences(control, variant_recipe("inception")) == {
        "dropout", "weight_decay", "lr_decay_speed", "lrn", "shuffle", "distortion"}
    assert _differences(variant_recipe("inception-x5"), x5) == {"batch_norm"}
    assert _differences(variant_recipe("inception-x30"), x30) == {"batch_norm"}
    assert set(MAIN) == {"inception", "bn-baseline", "bn-x5", "bn-x30", "inception-changes"}


def test_each_ablation_undoes_exactly_one_change():
    recipes = ablation_recipes()
    reference = recipes.pop("bn-x5")
    assert len(recipes) == len(ABLATIONS) == 7
    for recipe in recipes.values():
        changed = [k for k, v in recipe.to_dict().items() if v != reference.to_dict()[k]]
        assert len(changed) == 1
    assert recipes["undo-lr-x5"].lr == BASE_LR


def test_evaluation_steps():
    steps = evaluation_steps(1200, 15)
    assert len(steps) == 15 and steps[-1] == 1200 and steps[0] == 80
    assert evaluation_steps(10, 50) == list(range(1, 11))


def test_cli_overrides_every_recipe_flag():
    parser = argparse.ArgumentParser()
    inception.add_arguments(parser)
    args = parser.parse_args([
        "--preset", "quick", "--dropout", "0.1", "--weight-decay", "1e-3", "--lr", "0.5",
        "--lr-decay-speed", "2", "--lrn", "off", "--shuffle", "full", "--distortion", "none",
        "--variants", "inception", "bn-x5", "bn-x5-sigmoid", "--seeds", "2",
    ])
    specs = inception.plan_runs(args)
    assert [s.name for s in specs] == ["inception", "inception@s1", "bn-x5", "bn-x5@s1",
                                       "bn-x5-sigmoid"]
    for spec in specs:
        r = spec.recipe
        assert (r.dropout, r.weight_decay, r.lr, r.lr_decay_speed, r.lrn, r.shuffle,
                r.distortion) == (0.1, 1e-3, 0.5, 2, False, "full", "none")
    ablation = inception.plan_runs(parser.parse_args(["--ablation"]))
    assert len(ablation) == 8
    sweep = inception.plan_runs(parser.parse_args(["--sweep-lr", "0.01,0.02"]))
    assert [s.recipe.lr for s in sweep] == [0.01, 0.02]


# --- ensemble and report ---------------------------------------------------------------------


def test_ensemble_averages_probabilities_not_logits():
    a = torch.tensor([[0.90, 0.08, 0.02], [0.2, 0.7, 0.1]])
    b = torch.tensor([[0.01, 0.60, 0.39], [0.1, 0.8, 0.1]])
    mean = average_probabilities([a, b])
    assert torch.allclose(mean, torch.tensor([[0.455, 0.34, 0.205], [0.15, 0.75, 0.1]]))
    assert mean.argmax(1).tolist() == [0, 1]
    # Averaging log-probabilities (logits) would pick class 1 for the first example.
    assert ((a.log() + b.log()) / 2).argmax(1).tolist() == [1, 1]


def test_steps_to_reach():
    history = [{"step": 10, "val_accuracy": 0.5}, {"step": 20, "val_accuracy": float("nan")},
               {"step": 30, "val_accuracy": 0.8}]
    assert steps_to_reach(history, 0.7) == 30
    assert steps_to_reach(history, 0.9) is None


# --- training --------------------------------------------------------------------------------


def test_divergence_is_detected_and_recorded(tiny_splits, tmp_path):
    spec = RunSpec("blowup", Recipe(lr=1e6, lrn=False), TINY)
    result = train_run(spec, tiny_splits, tmp_path, progress=False)
    assert result["diverged"] and result["diverged_at_step"] <= TINY.steps
    assert json.loads((tmp_path / "results" / "blowup.json").read_text())["diverged"]


def test_resume_continues_exactly(tiny_splits, tmp_path, monkeypatch):
    spec = RunSpec("r", Recipe(batch_norm=True, dropout=0.2), TINY)
    straight = train_run(spec, tiny_splits, tmp_path / "a", progress=False)

    real_save, calls = train_module.save_checkpoint, []

    def interrupting_save(path, fingerprint, state):
        real_save(path, fingerprint, state)
        calls.append(path)
        if len(calls) == 2:  # killed right after the second checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tiny_splits, tmp_path / "b", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = train_run(spec, tiny_splits, tmp_path / "b", resume=True, progress=False)
    assert [h["val_accuracy"] for h in resumed["history"]] == [
        h["val_accuracy"] for h in straight["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], rel=1e-6)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    # A finished run is not trained again.
    again = train_run(spec, tiny_splits, tmp_path / "b", resume=True, progress=False)
    assert again["history"] == resumed["history"]


def test_resume_with_other_settings_is_refused(tiny_splits, tmp_path, monkeypatch):
    spec = RunSpec("r", Recipe(batch_norm=True, dropout=0.2), TINY)
    real_save = train_module.save_checkpoint

    def interrupting_save(path, fingerprint, state):
        real_save(path, fingerprint, state)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(train_module, "save_checkpoint", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tiny_splits, tmp_path, progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    changed = RunSpec("r", spec.recipe.replace(dropout=0.3), TINY)
    refused = r"recipe\.dropout: checkpoint 0\.2, now 0\.3"
    with pytest.raises(CheckpointMismatchError, match=refused):
        train_run(changed, tiny_splits, tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"seed"):
        train_run(RunSpec("r", spec.recipe, TINY, seed=1), tiny_splits, tmp_path, resume=True,
                  progress=False)


def test_cli_resume_with_other_settings_exits_2(tmp_path, capsys):
    from batchnorm.cli import main

    flags = ["reproduce", "inception", "--dataset", "synthetic", "--preset", "quick",
             "--variants", "inception", "--steps", "4",
             "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "final validation accuracy: inception" in out and "report.md" in out
    assert main([*flags, "--resume"]) == 0  # same settings: the finished run is reused
    capsys.readouterr()
    assert main([*flags, "--resume", "--dropout", "0.1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "recipe.dropout" in error and "--out" in error


def test_presets_are_valid_and_flags_override_them():
    for name, values in PRESETS.items():
        assert InceptionExperimentConfig(**values).scale().steps > 0, name
    parser = argparse.ArgumentParser()
    inception.add_arguments(parser)
    args = parser.parse_args(["--preset", "quick", "--steps", "7"])
    specs = inception.plan_runs(args)
    assert {spec.scale.steps for spec in specs} == {7}
    assert {spec.scale.width for spec in specs} == {PRESETS["quick"]["width"]}
    config = InceptionExperimentConfig(**PRESETS["quick"])
    assert len(specs) == sum(config.seeds_of(v) for v in config.variants) == 14
    gpu = InceptionExperimentConfig(**PRESETS["gpu"])
    assert gpu.width >= 1 and gpu.steps * 32 / 50000 >= 15 and gpu.eval_size == 10000


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    from batchnorm.cli import main

    dataset = "fashion-mnist"  # real data: fetched from Debian's package where not cached
    out = tmp_path / "run"
    assert main(["reproduce", "inception", "--preset", "quick", "--dataset", dataset,
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == {"inception", "bn-baseline", "bn-x5", "bn-x30",
                                        "bn-x5-sigmoid", "inception-changes", "inception-x5",
                                        "inception-x30", "inception-sigmoid"}
    for name, runs in summary["variants"].items():
        assert len(runs) == (2 if name in MAIN else 1)
        for row in runs:
            assert isinstance(row["diverged"], bool)
            assert row["final"] is None or 0 <= row["final"] <= 1
    assert len(summary["verdicts"]) == 4
    assert all(c["verdict"] in ("supported", "not supported", "mixed")
               for c in summary["verdicts"])
    assert summary["ensemble"]["recipe"] in MAIN and len(summary["ensemble"]["members"]) == 2
    for name in ("figure2.png", "report.md", "config.json", "metrics.csv"):
        assert (out / name).stat().st_size > 0
    history = json.loads((out / "results" / "bn-x5.json").read_text())["history"]
    assert len(history) == PRESETS["quick"]["evaluations"]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["lr"] < 1e-3 * history[0]["lr"]  # annealed to ~0


# --- analysis on synthetic histories ---------------------------------------------------------


def _history(accuracies, every=100):
    return [{"step": every * (i + 1), "val_accuracy": a, "train_loss": 1.0, "lr": 0.1}
            for i, a in enumerate(accuracies)]


def _result(name, seed, accuracies, final=None, diverged=False, steps=1000):
    return {"name": name, "seed": seed, "history": _history(accuracies),
            "scale": {"steps": steps, "evaluations": len(accuracies)},
            "diverged": diverged, "diverged_at_step": 300 if diverged else None,
            "final_val_accuracy": None if diverged else (final or accuracies[-1]),
            "test_accuracy": None if diverged else (final or accuracies[-1]),
            "last_curve_accuracy": None if diverged else accuracies[-1]}


def test_plateau_gain_on_synthetic_histories():
    rising = _history([0.1 * i for i in range(1, 11)])
    assert plateau_gain(rising, 1000) == pytest.approx(0.2)  # 0.1 per 100 steps x 200 steps
    flat = _history([0.5] * 7 + [0.8, 0.801, 0.799])
    assert abs(plateau_gain(flat, 1000)) < PLATEAU_GAIN
    assert plateau_gain(_history([0.5]), 1000) is None


def test_run_numbers_target_censoring_and_divergence():
    numbers = run_numbers(_result("a", 0, [0.5, 0.7, 0.76, 0.8] + [0.8] * 6), 0.75, 0.79)
    assert numbers["steps_to_target"] == 300 and not numbers["censored"]
    assert numbers["steps_to_baseline_final"] == 400
    assert numbers["plateaued"] and numbers["final"] == 0.8
    never = run_numbers(_result("b", 0, [0.5] * 10), 0.75, 0.79)
    assert never["steps_to_target"] is None and never["censored"] and never["steps"] == 1000
    diverged = run_numbers(_result("c", 0, [0.5, float("nan")], diverged=True), 0.75, None)
    assert diverged["diverged"] and diverged["final"] == 0.1 and diverged["steps"] == 1000


def test_group_seeds():
    assert group_seeds(["bn-x5@s1", "bn-x5", "inception", "bn-x5-sigmoid"]) == {
        "bn-x5": ["bn-x5", "bn-x5@s1"], "inception": ["inception"],
        "bn-x5-sigmoid": ["bn-x5-sigmoid"]}


def _numbers(variant, seeds_steps_final):
    return [run_numbers(_result(variant if seed == 0 else f"{variant}@s{seed}", seed,
                                [0.9 if (i + 1) * 100 >= steps else 0.5 for i in range(10)],
                                final=final), 0.75, None)
            for seed, (steps, final) in enumerate(seeds_steps_final)]


def test_verdicts_on_synthetic_runs():
    per_variant = {
        "inception": _numbers("inception", [(800, 0.80), (900, 0.81)]),
        "bn-baseline": _numbers("bn-baseline", [(300, 0.85), (400, 0.86)]),  # faster
        "bn-x5": _numbers("bn-x5", [(500, 0.90), (700, 0.87)]),  # slower, noisy
        "bn-x30": _numbers("bn-x30", [(300, 0.80), (400, 0.81)]),  # ends worse
        "bn-x5-sigmoid": _numbers("bn-x5-sigmoid", [(600, 0.84)]),
        "inception-sigmoid": [run_numbers(_result("inception-sigmoid", 0, [0.1] * 10), 0.75,
                                          None)],
    }
    verdicts = {c["claim"].split(" (")[0]: c for c in judge(per_variant)}
    assert verdicts["BN trains faster"]["verdict"] == "supported"
    faster = verdicts["BN trains faster"]["comparisons"][0]
    assert faster["a"] == [800, 900] and faster["b"] == [300, 400]
    # Equal per-seed differences: a zero-width t-interval, widened to +- one evaluation.
    assert faster["interval"]["low"] == pytest.approx(400) and "widened" in faster[
        "interval_kind"]
    higher_lr = verdicts["a higher lr helps with BN"]
    by_label = {row["comparison"]: row["verdict"] for row in higher_lr["comparisons"]}
    assert by_label["final(bn-x30) - final(bn-baseline)"] == "not supported"
    assert higher_lr["verdict"] == "mixed"
    sigmoid = verdicts["sigmoid is trainable with BN"]["comparisons"][0]
    assert sigmoid["verdict"] == "supported" and "one seed" in sigmoid["interval_kind"]
    assert "BN is what makes the high rate work" not in verdicts  # its controls were not run


def test_ensemble_uses_the_best_recipes_seeds(tmp_path):
    from batchnorm.experiments.runner import save_tensors, write_json

    labels = torch.tensor([0, 1, 2, 0])
    save_tensors(tmp_path / "results" / "labels.pt", {"val": labels, "test": labels})
    results, per_variant = {}, {}
    eye = torch.eye(3)
    for variant, final in (("bn-x5", 0.9), ("bn-x30", 0.8), ("bn-x5-sigmoid", 0.95)):
        seeds = 2 if variant in MAIN else 1  # the 1-seed recipe is never the ensemble
        runs = []
        for seed in range(seeds):
            name = variant if seed == 0 else f"{variant}@s{seed}"
            result = _result(name, seed, [final] * 10)
            results[name] = result
            write_json(tmp_path / "results" / f"{name}.json", result)
            wrong = 3 - seed  # each member gets one different example wrong
            probabilities = eye[labels].clone()
            probabilities[wrong % 4] = eye[(labels[wrong % 4] + 1) % 3]
            save_tensors(tmp_path / "results" / f"{name}.pt",
                         {"val": probabilities, "test": probabilities})
            runs.append(run_numbers(result, 0.75, None))
        per_variant[variant] = runs
    ensemble = ensemble_of_best(tmp_path, results, per_variant)
    assert ensemble["recipe"] == "bn-x5" and ensemble["members"] == ["bn-x5", "bn-x5@s1"]
    assert set(ensemble["member_accuracies"]) == {"bn-x5", "bn-x5@s1"}
