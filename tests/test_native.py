"""The native backend (``backends/native.py``): ATen's kernels plus the in-kernel and small-input
running-statistics updates, against torch in float64 and the paper's formulas."""
