"""Every BN backend on CUDA against float64 references (run by gpu_check.sh).

For each backend available on the device, each shape/layout and each dtype:
the training output, the batch statistics and the gradients with respect to x,
gamma and beta are compared with the reference backend run in float64 on the
same (rounded) input; the evaluation output with torch's, also in float64.
The fused activation/residual paths of "compiled" and "triton" are checked too.
Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import sys
import time

import torch

from batchnorm import backends as registry
from batchnorm import functional as bnf

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (shape, layout, dtypes): every dtype on three shapes, float32 on the rest, so that
# the generated kernels (one compile per shape class) fit the time budget.
SHAPES = [
    ((16, 32, 28, 28), "nchw", DTYPES),
    ((16, 32, 28, 28), "nhwc", DTYPES),
    ((8, 24, 50), "strided", DTYPES),  # every other sample of a batch
    ((3, 5, 7, 9), "nchw", DTYPES[:1]),  # odd sizes
    ((2, 3, 1000, 33), "nchw", DTYPES[:1]),  # few channels, large spatial: split reduction
    ((512, 300), "nc", DTYPES[:1]),
    ((64, 256, 7, 7), "nhwc", DTYPES[:1]),
]
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def make(shape, layout, dtype):
    x = (torch.randn(shape, device="cuda", dtype=torch.float64) * 2 + 1).to(dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x])[::2]
    return x


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    scale = max(1.0, float(want.abs().max()))
    return float((got - want).abs().max()) / scale


def check_training(backend, x) -> float:
    c = x.shape[1]
    pdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = torch.randn(c, device="cuda", dtype=pdtype, requires_grad=True)
    b = torch.randn(c, device="cuda", dtype=pdtype, requires_grad=True)
    xg = x.detach().clone().requires_grad_(True)
    y, mean, var, _ = bnf.normalize(xg, w, b, None, None, True, 1e-5, backend)
    g = torch.randn(y.shape, device="cuda", dtype=torch.float64).to(x.dtype)
    grads = torch.autograd.grad(y, (xg, w, b), g)
    x64 = x.detach().double().requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True)
    b64 = b.detach().double().requires_grad_(True)
    y64, mean64, var64, _ = bnf.normalize(x64, w64, b64, None, None, True, 1e-5, "reference")
    ref = torch.autograd.grad(y64, (x64, w64, b64), g.double())
    errors = [rel_err(y, y64), rel_err(mean, mean64), rel_err(var, var64)]
    errors += [rel_err(a, r) for a, r in zip(grads, ref, strict=True)]
    return max(errors)


def check_eval(backend, x) -> float:
    c = x.shape[1]
    pdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rm = torch.randn(c, device="cuda", dtype=pdtype)
    rv = torch.rand(c, device="cuda", dtype=pdtype) + 0.5
    w = torch.randn(c, device="cuda", dtype=pdtype)
    b = torch.randn(c, device="cuda", dtype=pdtype)
    with torch.no_grad():
        y, _, _, _ = bnf.normalize(x, w, b, rm, rv, False, 1e-5, backend)
    want = torch.nn.functional.batch_norm(
        x.double(), rm.double(), rv.double(), w.double(), b.double(), False, 0.0, 1e-5
    )
    return rel_err(y, want)


def check_fused(backend, x, activation, residual) -> float:
    c = x.shape[1]
    w = torch.randn(c, device="cuda", requires_grad=True)
    b = torch.randn(c, device="cuda", requires_grad=True)
    xg = x.detach().clone().requires_grad_(True)
    r = torch.randn_like(x, requires_grad=True) if residual else None
    y, *_ = bnf.normalize(xg, w, b, None, None, True, 1e-5, backend, activation=activation,
                             residual=r)
    y64, *_ = bnf.normalize(
        xg.double(), w.double(), b.double(), None, None, True, 1e-5, "reference",
        activation=activation, residual=r.double() if r is not None else None,
    )  # fmt: skip
    inputs = [xg, w, b] + ([r] if r is not None else [])
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs, g)
    want = torch.autograd.grad(y64, inputs, g.double())
    return max([rel_err(y, y64)] + [rel_err(a, v) for a, v in zip(got, want, strict=True)])


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    probe = torch.zeros(2, 3, device="cuda")
    backends = [name for name in bnf.available_backends(probe) if name != "reference"]
    print(f"# backends on cuda: {backends}")
    failures = 0

    def report(what: str, error: float, tol: float) -> None:
        nonlocal failures
        ok = error <= tol
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {what}: max rel err {error:.2e} (tol {tol:.0e})",
              flush=True)  # fmt: skip

    for backend in [*backends, "auto"]:
        start = time.perf_counter()
        for shape, layout, dtypes in SHAPES:
            for dtype in dtypes:
                x = make(shape, layout, dtype)
                if backend != "auto" and not registry.get(backend).is_available(x):
                    continue
                label = f"{backend} {shape} {layout} {str(dtype)[6:]}"
                try:
                    report(f"{label} train", check_training(backend, x), TOL[dtype])
                    report(f"{label} eval", check_eval(backend, x), TOL[dtype])
                except Exception as error:  # report and go on: one line per failure
                    failures += 1
                    print(f"FAIL {label}: {type(error).__name__}: {error}", flush=True)
        print(f"# {backend}: {time.perf_counter() - start:.1f} s", flush=True)
    for backend in ("compiled", "triton"):
        if backend not in backends:
            continue
        for shape, layout, _ in SHAPES[:2]:
            x = make(shape, layout, torch.float32)
            for activation in ("relu", "sigmoid"):
                for residual in (False, True):
                    label = f"{backend} fused {activation} residual={residual} {layout}"
                    report(label, check_fused(backend, x, activation, residual), 2e-4)
    print(f"# {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
