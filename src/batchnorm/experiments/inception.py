"""``batchnorm reproduce inception``: the paper's Figures 2-3 (and section 9) at small scale.

Trains the Inception variants of PAPER.md section 8 on Fashion-MNIST (or MNIST) with
the small network of :mod:`batchnorm.models.inception`, then an ensemble of BN-x30
networks, and writes figure2.png, report.md, summary.json, metrics.csv, config.json.

Modes (all write into ``--out``, and the report shows whatever results exist):

* default: ``--variants`` (the five of Figure 3 and the two no-BN controls) + ensemble;
* ``--ablation``: bn-x5 with each of section 4.2.1's seven changes undone in turn;
* ``--sweep-lr LR,LR,...``: the base learning-rate sweep for ``inception``; the best
  value is the module constant ``BASE_LR``, which every variant is defined relative to.

Threads: one intra-op thread per training process by default: on this 2-core machine,
shared with other jobs, two threads ran a step 5-15x slower than one (oversubscription).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments._inception_data import Splits, load_splits
from batchnorm.experiments._inception_recipe import (
    BASE_LR,
    CONTROLS,
    DISTORTIONS,
    PRESETS,
    VARIANTS,
    Preset,
    ablation_recipes,
    ensemble_recipe,
    variant_recipe,
)
from batchnorm.experiments._inception_report import write_outputs
from batchnorm.experiments._inception_train import RunSpec, train_run
from batchnorm.experiments._io import save_checkpoint, write_json

__all__ = ["add_arguments", "plan_runs", "run"]

_RECIPE_FLAGS = ("lr", "dropout", "weight_decay", "lr_decay_speed", "lrn", "shuffle",
                 "distortion", "momentum", "batch_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist",
                        choices=["fashion-mnist", "mnist", "synthetic"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, *CONTROLS],
                        choices=[*VARIANTS, *CONTROLS], metavar="VARIANT",
                        help=f"any of {', '.join((*VARIANTS, *CONTROLS))}")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant")
    parser.add_argument("--out", default="runs/inception")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--ablation", action="store_true",
                        help="run the seven-change ablation from bn-x5 instead")
    parser.add_argument("--sweep-lr", default=None, metavar="LR,LR,...",
                        help="run the base-lr sweep for `inception` instead")
    parser.add_argument("--ensemble-members", type=int, default=None,
                        help="BN-x30 ensemble size (default: the preset's; 0 skips)")
    parser.add_argument("--base-lr", type=float, default=BASE_LR,
                        help="the lr every variant is relative to (x5, x30)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset")
    parser.add_argument("--width", type=float, default=None, help="override the preset")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default 1 on CPU)")
    parser.add_argument("--channels-last", choices=["on", "off"], default="on",
                        help="memory format (measured faster on CPU; see report)")
    parser.add_argument("--no-progress", action="store_true")
    recipe = parser.add_argument_group("recipe overrides (applied to every run)")
    recipe.add_argument("--lr", type=float, default=None)
    recipe.add_argument("--momentum", type=float, default=None)
    recipe.add_argument("--batch-size", type=int, default=None)
    recipe.add_argument("--dropout", type=float, default=None)
    recipe.add_argument("--weight-decay", type=float, default=None)
    recipe.add_argument("--lr-decay-speed", type=float, default=None)
    recipe.add_argument("--lrn", choices=["on", "off"], default=None)
    recipe.add_argument("--shuffle", choices=["shards", "full"], default=None)
    recipe.add_argument("--distortion", choices=sorted(DISTORTIONS), default=None)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    changes = {}
    for flag in _RECIPE_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            changes[flag] = (value == "on") if flag == "lrn" else value
    return changes


def _preset(args: argparse.Namespace) -> Preset:
    preset = PRESETS[args.preset]
    changes = {k: v for k, v in (("steps", args.steps), ("width", args.width)) if v is not None}
    return Preset(**{**preset.to_dict(), **changes})


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """The runs this invocation trains, in order."""
    preset, base_lr, overrides = _preset(args), args.base_lr, _overrides(args)
    specs: list[RunSpec] = []
    if args.sweep_lr:
        for lr in (float(v) for v in args.sweep_lr.split(",")):
            recipe = variant_recipe("inception", lr).replace(**overrides)
            specs.append(RunSpec(f"sweep-lr{lr:g}", recipe, preset))
        return specs
    if args.ablation:
        for name, recipe in ablation_recipes(base_lr).items():
            specs.append(RunSpec(f"ablation-{name}", recipe.replace(**overrides), preset))
        return specs
    for name in args.variants:
        recipe = variant_recipe(name, base_lr).replace(**overrides)
        for seed in range(args.seeds):
            specs.append(RunSpec(name if seed == 0 else f"{name}@s{seed}", recipe, preset, seed))
    members = preset.ensemble_members if args.ensemble_members is None else args.ensemble_members
    for member in range(members):
        recipe = ensemble_recipe(base_lr).replace(**overrides)
        specs.append(RunSpec(f"ensemble-{member}", recipe, preset, seed=100 + member))
    return specs


def _load(args: argparse.Namespace, preset: Preset) -> Splits:
    return load_splits(args.dataset, args.data_dir).limit(preset.train_limit,
                                                         preset.final_eval_limit)


def _train_one(spec: RunSpec, args: argparse.Namespace, position: int) -> dict[str, Any]:
    """Entry point of a worker process (also used in-process when --jobs 1)."""
    torch.set_num_threads(args.threads or 1)
    splits = _load(args, spec.preset)
    return train_run(spec, splits, Path(args.out), device=args.device,
                     channels_last=args.channels_last == "on", resume=args.resume,
                     progress=not args.no_progress, position=position)


def _config(args: argparse.Namespace, specs: list[RunSpec], splits: Splits) -> dict[str, Any]:
    return {
        "mode": "sweep" if args.sweep_lr else "ablation" if args.ablation else "variants",
        "dataset": args.dataset, "data_source": splits.source,
        "train_images": len(splits.train_x), "val_images": len(splits.val_x),
        "test_images": len(splits.test_x), "preset": args.preset,
        "preset_values": _preset(args).to_dict(), "base_lr": args.base_lr,
        "device": args.device, "threads_per_process": args.threads or 1, "jobs": args.jobs,
        "channels_last": args.channels_last, "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(), "cpu_count": os.cpu_count(),
        "normalization": {"mean": splits.mean, "std": splits.std},
        "evaluation": "single crop, validation = last 10k of train (eval-mode BN with running "
                      "statistics); curve on the first eval_size validation images, final "
                      "numbers on the whole validation split and the test set",
        "runs": {spec.name: {"seed": spec.seed, **spec.recipe.to_dict()} for spec in specs},
    }


def _reuse_main_bn_x5(specs: list[RunSpec], out: Path) -> list[RunSpec]:
    """The ablation's reference is bn-x5: reuse the main run's if it is the same run."""
    import json
    import shutil

    main_result = out / "results" / "bn-x5.json"
    kept = []
    for spec in specs:
        if spec.name == "ablation-bn-x5" and main_result.exists():
            result = json.loads(main_result.read_text())
            if (result["recipe"] == spec.recipe.to_dict()
                    and result["preset"] == spec.preset.to_dict() and result["seed"] == spec.seed):
                write_json(out / "results" / f"{spec.name}.json", {**result, "name": spec.name})
                probabilities = main_result.with_suffix(".pt")
                if probabilities.exists():
                    shutil.copyfile(probabilities, out / "results" / f"{spec.name}.pt")
                continue
        kept.append(spec)
    return kept


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    preset = _preset(args)
    specs = plan_runs(args)
    splits = _load(args, preset)
    config = _config(args, specs, splits)
    config_name = {"sweep": "config-sweep.json", "ablation": "config-ablation.json"}.get(
        config["mode"], "config.json")
    write_json(out / config_name, config)
    save_checkpoint(out / "results" / "labels.pt", {"val": splits.val_y, "test": splits.test_y})
    if args.ablation:
        specs = _reuse_main_bn_x5(specs, out)
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train_one, spec, args, i % args.jobs)
                       for i, spec in enumerate(specs)]
            for future in futures:
                future.result()
    else:
        torch.set_num_threads(args.threads or 1)
        for spec in specs:
            train_run(spec, splits, out, device=args.device,
                      channels_last=args.channels_last == "on", resume=args.resume,
                      progress=not args.no_progress)
    config["wall_seconds"] = time.perf_counter() - started
    config["load_average_at_end"] = os.getloadavg()
    write_json(out / config_name, config)
    summary = write_outputs(out)
    print(f"wrote {out}/report.md, summary.json, figure2.png "
          f"({config['wall_seconds'] / 60:.1f} min)")
    if summary["lr_sweep"] and config["mode"] == "sweep":
        best = max(summary["lr_sweep"], key=lambda r: r["max_accuracy"] or 0.0)
        print(f"best base lr for inception: {best['lr']:g}")
    return 0
