"""The ``batchnorm`` command.

Each subcommand lives beside the code it drives and is imported only when it runs:
``batchnorm --help`` and ``batchnorm reproduce --help`` import none of them, and
``batchnorm reproduce figure1 ...`` imports only ``batchnorm.experiments.figure1``, so
the command stays fast and one broken subcommand cannot break the rest. A subcommand
module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (command path, module, help)
_COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "fetch"), "batchnorm.data._cli_fetch", "fetch and verify a dataset"),
    (("data", "info"), "batchnorm.data._cli_info", "show where each dataset is found"),
    (("reproduce", "figure1"), "batchnorm.experiments.figure1", "the paper's Figure 1 (MNIST)"),
    (
        ("reproduce", "inception"),
        "batchnorm.experiments.inception",
        "the paper's Figures 2-3 (Inception variants) at small scale",
    ),
    (
        ("reproduce", "claims"),
        "batchnorm.experiments.claims",
        "every claim of the paper and its critics, each with a verdict",
    ),
    (("bench",), "batchnorm.benchmark", "benchmark every backend against torch"),
    (("diagnose",), "batchnorm.diagnose_cli", "health check of the BN layers of a saved model"),
]


def _chosen(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The command path ``argv`` starts with, if any."""
    for path, _module, _help in _COMMANDS:
        if tuple(argv[: len(path)]) == path:
            return path
    return None


def _build_parser(chosen: tuple[str, ...] | None) -> argparse.ArgumentParser:
    """Every command with its help; only the ``chosen`` one gets its module's flags."""
    parser = argparse.ArgumentParser(prog="batchnorm", description=__doc__.splitlines()[0])
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", required=True)
    }
    for path, module_name, help_text in _COMMANDS:
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(prefix[-1])
                groups[prefix] = group_parser.add_subparsers(
                    dest=f"command_{depth}", required=True
                )
        sub = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if path != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # reported by main, with the module's name
            sub.set_defaults(_import_error=error)
            continue
        module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(_chosen(argv)).parse_args(argv)
    if getattr(args, "_import_error", None) is not None:
        print(f"batchnorm: cannot load {args._module}: {args._import_error}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
