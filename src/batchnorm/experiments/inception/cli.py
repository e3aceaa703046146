"""``batchnorm reproduce inception``: plan the runs, train them (in parallel processes if
asked), then write the report from every result in the run folder.

Multi-process training of each run (:mod:`.parallel`): ``--nproc N`` spawns N ranks on
this machine (file rendezvous in a temporary folder) after this process has claimed
the run folder and written the config, and writes the report when they are done. Under
``torchrun`` (RANK/WORLD_SIZE set) every process runs this command: rank 0 claims the
folder, writes and reports as a single process would, then tells the others which runs
to train (or that it failed, so that they stop instead of waiting).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing

from batchnorm.experiments.inception import parallel
from batchnorm.experiments.inception.config import (
    PRESETS,
    InceptionExperimentConfig,
    InceptionOptions,
    RecipeOverrides,
)
from batchnorm.experiments.inception.data import Splits, load_splits
from batchnorm.experiments.inception.recipe import ablation_recipes, variant_recipe
from batchnorm.experiments.inception.report import headline, write_outputs
from batchnorm.experiments.inception.train import (
    RunSpec,
    check_resumable,
    run_fingerprint,
    train_run,
)
from batchnorm.experiments.runner import (
    ConfigError,
    ExperimentError,
    RunOptions,
    Session,
    add_flags,
    add_preset_flag,
    flags_of,
    from_args,
    print_summary,
    resolve_device,
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
    launch = parallel.from_environment()
    if launch is None:
        return run_experiment(PROG, args, lambda session: _run(args, session))
    return _run_launched(args, launch)


def _run_launched(args: argparse.Namespace, launch: parallel.Launch) -> int:
    """One rank of a job started by torchrun (see the module docstring)."""
    try:
        options = from_args(RunOptions, args)
        device = parallel.start(launch, resolve_device(options.device))
    except ExperimentError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    try:
        if launch.rank == 0:
            told: list[bool] = []
            code = run_experiment(PROG, args, lambda session: _run(
                args, session, device=device, tell=lambda names: told.append(_tell(names))))
            if not told:  # failed before training: release the other ranks
                _tell(None)
            return code
        names = _tell(None, receive=True)
        if names is None:
            return 1  # rank 0 printed why
        torch.set_num_threads(options.threads)
        config, overrides, modes = _settings(args)
        splits = _load(config, options)
        for spec in [spec for spec in plan(config, overrides, modes) if spec.name in names]:
            train_run(spec, splits, Path(options.out), device=device,
                      channels_last=modes.channels_last, resume=options.resume,
                      progress=False)
        return 0
    finally:
        parallel.stop()


def _tell(names: list[str] | None, receive: bool = False) -> list[str] | None:
    """Rank 0 sends the names of the runs to train (None: stop); the others receive them."""
    message = [None if receive else names]
    dist.broadcast_object_list(message, src=0)
    return message[0]


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


def _run_rank(rank: int, world_size: int, rendezvous: str, specs: list[RunSpec],
              config: InceptionExperimentConfig, options: RunOptions, device: str,
              channels_last: bool) -> None:
    """Entry point of rank ``rank`` of ``--nproc`` (spawned)."""
    torch.set_num_threads(options.threads)
    launch = parallel.Launch(rank, world_size, rank, init_method=f"file://{rendezvous}")
    dev = parallel.start(launch, torch.device(device))
    try:
        splits = _load(config, options)
        for spec in specs:
            train_run(spec, splits, Path(options.out), device=dev, channels_last=channels_last,
                      resume=options.resume, progress=not options.no_progress and rank == 0)
    finally:
        parallel.stop()


def _spawn(specs: list[RunSpec], config: InceptionExperimentConfig, options: RunOptions,
           device: torch.device, modes: InceptionOptions) -> None:
    with tempfile.TemporaryDirectory(prefix="batchnorm-rendezvous-") as folder:
        torch.multiprocessing.start_processes(
            _run_rank, args=(modes.nproc, str(Path(folder) / "init"), specs, config, options,
                             str(device), modes.channels_last),
            nprocs=modes.nproc, join=True, start_method="spawn")


def _check_parallel(modes: InceptionOptions, specs: list[RunSpec], device: torch.device,
                    launched: bool) -> None:
    if modes.nproc > 1 and modes.jobs > 1 and not launched:
        raise ConfigError(f"--nproc {modes.nproc} with --jobs {modes.jobs}: choose one")
    ranks = parallel.world_size() if launched else modes.nproc
    if ranks > 1 and device.type == "cuda" and not launched \
            and ranks > torch.cuda.device_count():
        raise ConfigError(f"--nproc {ranks}: only {torch.cuda.device_count()} CUDA devices")
    for spec in specs:
        if spec.recipe.batch_size < ranks:
            raise ConfigError(f"--batch-size {spec.recipe.batch_size}: smaller than the "
                              f"{ranks} processes sharing each batch (run {spec.name})")


def _run(args: argparse.Namespace, session: Session, device: torch.device | None = None,
         tell: Any = None) -> int:
    """The whole invocation in one process, or as rank 0 of a torchrun job (``device`` its
    device, ``tell`` what releases the other ranks)."""
    config, overrides, modes = _settings(args)
    options, out = session.options, Path(session.options.out)
    device = device or session.device
    specs = plan(config, overrides, modes)
    splits = _load(config, options)
    for spec in specs:  # before anything is written
        if spec.recipe.batch_size > len(splits.train_x):
            raise ConfigError(f"--batch-size {spec.recipe.batch_size}: larger than the "
                              f"{len(splits.train_x)} training images of run {spec.name}")
    _check_parallel(modes, specs, device, launched=tell is not None)
    if options.resume:  # refused before any file is written or any rank started
        for spec in specs:
            check_resumable(spec, splits, out)
    document = _document(args, session, config, overrides, modes, specs, splits)
    config_path = out / _CONFIG_FILES[modes.mode]
    write_json(config_path, document)
    save_tensors(out / "results" / "labels.pt", {"val": splits.val_y, "test": splits.test_y})
    if modes.ablation:
        specs = _reuse_main_bn_x5(specs, out, splits)
    if tell is not None:  # rank 0 of torchrun: the others train the same runs
        tell([spec.name for spec in specs])
        for spec in specs:
            train_run(spec, splits, out, device=device, channels_last=modes.channels_last,
                      resume=options.resume, progress=not options.no_progress)
    elif modes.nproc > 1:
        _spawn(specs, config, options, device, modes)
    elif modes.jobs > 1:
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
                    "processes_per_run": parallel.world_size() if parallel.world_size() > 1
                    else modes.nproc,
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
