"""What every experiment shares, one concept per module.

========================  ==================================================================
:mod:`.settings`          frozen dataclasses -> flags, presets, validation (one config style)
:mod:`.options`           the shared runtime flags (--out, --device, --threads, --resume, ...)
:mod:`.session`           one invocation: device, threads, metadata, errors -> exit codes
:mod:`.errors`            the errors reported in one line with exit code 2
:mod:`.folder`            atomic writes into the run folder, checksummed tensor files
:mod:`.lock`              the run folder checked, locked, never overwritten by surprise
:mod:`.checkpoints`       checkpoints fingerprinted by their settings; refused on mismatch
:mod:`.seeds`             named seed streams derived from the run seed
:mod:`.metadata`          versions, platform, threads, load average, wall time
:mod:`.progress`          the tqdm progress bar
:mod:`.plots`             Agg figures in one style, mean curves with seed bands
:mod:`.summary`           the few lines every run ends with on stdout
========================  ==================================================================
"""

from batchnorm.experiments.runner.checkpoints import (
    CheckpointMismatchError,
    check_fingerprint,
    load_checkpoint,
    resume_from,
    save_checkpoint,
)
from batchnorm.experiments.runner.errors import ConfigError, ExperimentError
from batchnorm.experiments.runner.folder import (
    DamagedFileError,
    load_tensors,
    save_tensors,
    write_json,
    write_text,
)
from batchnorm.experiments.runner.lock import FolderBusyError, claim_folder
from batchnorm.experiments.runner.metadata import RunMetadata, command_line, flags_of
from batchnorm.experiments.runner.options import RunOptions, resolve_device
from batchnorm.experiments.runner.progress import Progress
from batchnorm.experiments.runner.seeds import SeedStreams, indexed_generator, indexed_seed
from batchnorm.experiments.runner.session import Session, run_experiment
from batchnorm.experiments.runner.settings import (
    NONNEGATIVE,
    POSITIVE,
    Settings,
    add_flags,
    add_preset_flag,
    comma_separated,
    from_args,
    interval,
    setting,
)
from batchnorm.experiments.runner.summary import print_summary

__all__ = [
    "NONNEGATIVE",
    "POSITIVE",
    "CheckpointMismatchError",
    "ConfigError",
    "DamagedFileError",
    "ExperimentError",
    "FolderBusyError",
    "Progress",
    "RunMetadata",
    "RunOptions",
    "SeedStreams",
    "Session",
    "Settings",
    "add_flags",
    "add_preset_flag",
    "check_fingerprint",
    "claim_folder",
    "comma_separated",
    "command_line",
    "flags_of",
    "from_args",
    "indexed_generator",
    "indexed_seed",
    "interval",
    "load_checkpoint",
    "load_tensors",
    "print_summary",
    "resolve_device",
    "resume_from",
    "run_experiment",
    "save_checkpoint",
    "save_tensors",
    "setting",
    "write_json",
    "write_text",
]
