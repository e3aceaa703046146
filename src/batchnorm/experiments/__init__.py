"""The paper's experiments; each writes a self-contained run folder.

``runner/`` is what they share (settings as dataclasses -> flags and presets, seeds,
fingerprinted checkpoints, run metadata, progress, plots, the end-of-run summary);
``figure1/`` and ``inception/`` say only what is particular to each experiment and
expose ``add_arguments(parser)`` and ``run(args) -> int`` for ``batchnorm reproduce``.
"""
