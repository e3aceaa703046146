"""``batchnorm reproduce inception``: plan the runs, train them (in parallel processes if
asked), then write the report from every result in the run folder."""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.inception.config import (
    PRESETS,
    InceptionExperimentConfig,
    InceptionOptions,
    RecipeOverrides,
)
from batchnorm.experiments.inception.data import Splits, load_splits
from batchnorm.experiments.inception.recipe import ablation_recipes, variant_recipe
from batchnorm.experiments.inception.report import headline, write_outputs
from batchnorm.experiments.inception.train import RunSpec, run_fingerprint, train_run
from batchnorm.experiments.runner import (
    ConfigError,
    RunOptions,
    Session,
    add_flags,
    add_preset_flag,
    flags_of,
    from_args,
    print_summary,
    run_experiment,
    save_tensors,
    write_json,
)

__all__ = ["PROG", "add_arguments", "plan_runs", "run"]

PROG = "batchnorm reproduce inception"
_CONFIG_FILES = {"variants": "config.json", "sweep": "config-sweep.json",
                 "ablation": "config-ablation.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_flag(parser, PRESETS)
    add_flags(parser.add_argument_group("settings (--preset sets the scale)"),
              InceptionExperimentConfig)
    add_flags(parser.add_argument_group("recipe overrides (applied to every run)"),
              RecipeOverrides)
    add_flags(parser.add_argument_group("modes and parallelism"), InceptionOptions)
    add_flags(parser.add_argument_group("run options"), RunOptions,
              defaults={"out": "runs/inception", "device": "cpu"})


def _settings(args: argparse.Namespace
              ) -> tuple[InceptionExperimentConfig, RecipeOverrides, InceptionOptions]:
    return (from_args(InceptionExperimentConfig, args, PRESETS),
            from_args(RecipeOverrides, args), from_args(InceptionOptions, args))


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """The runs this invocation trains, in order."""
    return plan(*_settings(args))


def plan(config: InceptionExperimentConfig, overrides: RecipeOverrides,
         options: InceptionOptions) -> list[RunSpec]:
    scale, base_lr, changes = config.scale(), config.base_lr, overrides.changes()
    if options.sweep_lr:
        return [RunSpec(f"sweep-lr{lr:g}", variant_recipe("inception", lr).replace(**changes),
                        scale) for lr in options.sweep_lr]
    if options.ablation:
        return [RunSpec(f"ablation-{name}", recipe.replace(**changes), scale)
                for name, recipe in ablation_recipes(base_lr).items()]
    specs = []
    for name in config.variants:
        recipe = variant_recipe(name, base_lr).replace(**changes)
        specs += [RunSpec(name if seed == 0 else f"{name}@s{seed}", recipe, scale, seed)
                  for seed in range(config.seeds_of(name))]
    return specs


def run(args: argparse.Namespace) -> int:
    """Train the planned runs into ``--out`` and write the report; 0 on success, 2 for bad
    flags or a refused resume, 1 for no data."""
    return run_experiment(PROG, args, lambda session: _run(args, session))


def _load(config: InceptionExperimentConfig, options: RunOptions) -> Splits:
    return load_splits(config.dataset, options.data_dir, progress=not options.no_progress
                       ).limit(config.train_limit, config.final_eval_limit)


def _train_one(spec: RunSpec, config: InceptionExperimentConfig, options: RunOptions,
               device: str, channels_last: bool, position: int) -> dict[str, Any]:
    """Entry point of a worker process (``--jobs`` > 1)."""
    torch.set_num_threads(options.threads)
    return train_run(spec, _load(config, options), Path(options.out), device=device,
                     channels_last=channels_last, resume=options.resume,
                     progress=not options.no_progress, position=position)


def _run(args: argparse.Namespace, session: Session) -> int:
    config, overrides, modes = _settings(args)
    options, out = session.options, Path(session.options.out)
    specs = plan(config, overrides, modes)
    splits = _load(config, options)
    for spec in specs:  # before anything is written
        if spec.recipe.batch_size > len(splits.train_x):
            raise ConfigError(f"--batch-size {spec.recipe.batch_size}: larger than the "
                              f"{len(splits.train_x)} training images of run {spec.name}")
    document = _document(args, session, config, overrides, modes, specs, splits)
    config_path = out / _CONFIG_FILES[modes.mode]
    write_json(config_path, document)
    save_tensors(out / "results" / "labels.pt", {"val": splits.val_y, "test": splits.test_y})
    if modes.ablation:
        specs = _reuse_main_bn_x5(specs, out, splits)
    if modes.jobs > 1:
        with ProcessPoolExecutor(modes.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train_one, spec, config, options, str(session.device),
                                   modes.channels_last, index % modes.jobs)
                       for index, spec in enumerate(specs)]
            for future in futures:
                future.result()
    else:
        for spec in specs:
            train_run(spec, splits, out, device=session.device,
                      channels_last=modes.channels_last, resume=options.resume,
                      progress=not options.no_progress)
    document["run"] = session.metadata.finish()
    write_json(config_path, document)
    summary = write_outputs(out)
    print_summary(f"inception ({modes.mode}): {len(specs)} runs of {config.steps} steps, "
                  f"in {out} ({document['run']['wall_seconds'] / 60:.1f} min)",
                  headline(summary), out / "report.md",
                  [(claim["claim"], claim["verdict"]) for claim in summary.get("verdicts", [])])
    return 0


def _document(args: argparse.Namespace, session: Session, config: InceptionExperimentConfig,
              overrides: RecipeOverrides, modes: InceptionOptions, specs: list[RunSpec],
              splits: Splits) -> dict[str, Any]:
    """config.json (config-sweep.json, config-ablation.json): what this invocation runs."""
    return {
        "experiment": "inception",
        "mode": modes.mode,
        "settings": config.to_dict(),
        "target_accuracy": config.target_accuracy(),
        "recipe_overrides": overrides.changes(),
        "data": {"dataset": config.dataset, "source": splits.source,
                 "train_images": len(splits.train_x), "val_images": len(splits.val_x),
                 "test_images": len(splits.test_x),
                 "normalization": {"mean": splits.mean, "std": splits.std}},
        "evaluation": "single crop, validation = last 10k of train (eval-mode BN with running "
                      "statistics); curve on the first eval_size validation images, final "
                      "numbers (final weights, never a maximum) on the whole validation split "
                      "and the test set",
        "runs": {spec.name: {"seed": spec.seed, **spec.recipe.to_dict()} for spec in specs},
        "runtime": {**session.runtime(), "jobs": modes.jobs,
                    "channels_last": modes.channels_last},
        "flags": flags_of(args),
    }


def _reuse_main_bn_x5(specs: list[RunSpec], out: Path, splits: Splits) -> list[RunSpec]:
    """The ablation's reference is bn-x5: reuse the main run's if it is the same run."""
    main_result = out / "results" / "bn-x5.json"
    kept = []
    for spec in specs:
        if spec.name == "ablation-bn-x5" and main_result.exists():
            result = json.loads(main_result.read_text())
            if result.get("fingerprint") == run_fingerprint(spec, splits):
                write_json(out / "results" / f"{spec.name}.json", {**result, "name": spec.name})
                probabilities = main_result.with_suffix(".pt")
                if probabilities.exists():
                    shutil.copyfile(probabilities, out / "results" / f"{spec.name}.pt")
                continue
        kept.append(spec)
    return kept
