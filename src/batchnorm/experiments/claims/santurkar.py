"""Santurkar et al. 2018 (arXiv:1805.11604): ``ics``, ``noisy-bn`` and ``smoothness``.

One training protocol serves the three claims (their sub-runs are shared through the
lab's cache): ReLU MLPs ``784 - width x depth - 10`` on MNIST, He-normal init (weights
N(0, 2 / fan_in), the same draw for every arm and rate of a seed), plain SGD, batches
drawn with replacement from a per-seed stream (every arm and rate of a seed sees the same
batches). Arms: ``plain`` (no BN), ``bn`` (BN before every ReLU) and ``noisy`` (BN, then
per-step per-unit noise ``h <- h * s + b``, s ~ U(1, 1 + n), b ~ U(-n, n), redrawn at
every step and layer, before the ReLU; none at evaluation). Each arm (and noise level)
trains over a grid of rates in one :class:`StackedMLP`; its rate is the one with the best
mean validation accuracy; test accuracy is reported.

At ``probes`` points of training (step ``j * steps / probes``, before that step's update,
on that step's batch) every network is measured:

* **ICS** of layer i (docs/method.md section 10): G = dL/dW_i, G' = dL/dW_i after every
  layer below i took its SGD step ``p <- p - lr * dL/dp`` (same batch, same noise):
  ``||G - G'|| / ||G||`` and ``cos(G, G')``; layers 2..L (layer 1 has nothing below).
* **landscape** along g = dL/dtheta (all parameters): with theta_f = theta - f * lr * g for
  f in ``factors``: loss range ``max_f L(theta_f) - min_f L(theta_f)``, gradient
  predictiveness ``max_f ||g - g(theta_f)||`` and effective beta-smoothness
  ``max_f ||g - g(theta_f)|| / (f * lr * ||g||)``.
* **shift** of each layer's nonlinearity input between this step and the next: per unit
  the batch mean mu and std sd, ``mean_units(|mu_t+1 - mu_t| + |sd_t+1 - sd_t|)``, averaged
  over hidden layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.data import load_split
from batchnorm.experiments.runner import Settings, setting
from batchnorm.experiments.runner.evidence import (
    MIXED,
    SUPPORTED,
    Interval,
    Rule,
    Verdict,
    combine,
    decide,
    mean_interval,
    paired_interval,
)
from batchnorm.experiments.runner.plots import mean_band, save_plot
from batchnorm.experiments.runner.seeds import SeedStreams
from batchnorm.models.stacked import StackedMLP, gather_batches, stacked_cross_entropy

__all__ = [
    "ICS",
    "NOISY_BN",
    "SMOOTHNESS",
    "NoisyReLU",
    "SanturkarConfig",
    "ics_finding",
    "ics_verdict",
    "landscape",
    "layer_ics",
    "noisy_verdict",
    "probe_along_gradient",
    "smoothness_verdict",
]

VERSION = "santurkar-1"
NOISY_VERSION = "santurkar-noisy-2"  # 2: evaluated with the noise's mean scale
STREAMS = SeedStreams("init", "data", "noise")
ICS_MARGIN = math.log(0.8)  # BN "reduces ICS" only if it cuts it by more than 20%
ACCURACY_MARGIN = -0.01  # noisy BN "trains as well" within 1 percentage point of BN
SHIFT_RATIO = 2.0  # noisy BN's shift must be more than twice BN's


@dataclass(frozen=True)
class SanturkarConfig(Settings):
    dataset: str = setting("mnist", "dataset", choices=("mnist", "fashion-mnist"))
    train: int = setting(50000, "training rows")
    val: int = setting(5000, "validation rows (the last of the official training set)")
    test: int = setting(10000, "test rows")
    width: int = setting(100, "hidden units per layer")
    depth: int = setting(4, "hidden layers")
    batch: int = setting(60, "batch size")
    steps: int = setting(800, "SGD steps")
    lrs: tuple[float, ...] = setting((0.05, 0.2, 0.8), "learning-rate grid (per arm)")
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds")
    probes: int = setting(5, "measurement points during training",
                          check=lambda n: None if n >= 1 else "expected >= 1")
    factors: tuple[float, ...] = setting((0.5, 1.0, 2.0, 4.0), "landscape step factors x lr")
    noise: tuple[float, ...] = setting((0.5, 1.0, 2.0), "noisy-BN noise levels n")


QUICK = SanturkarConfig(train=10000, val=2000, test=2000, width=64, depth=3, steps=300,
                        lrs=(0.1, 0.5), seeds=(0, 1), probes=2, noise=(1.0,))
DEFAULT = SanturkarConfig()
GPU = SanturkarConfig(train=50000, val=10000, width=256, depth=5, steps=10000,
                      lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0), seeds=(0, 1, 2, 3, 4), probes=10)
PRESETS = {"quick": QUICK, "default": DEFAULT, "gpu": GPU}


# --- the measuring code ------------------------------------------------------------------


class NoisyReLU(nn.Module):
    """ReLU whose input first gets noise ``h * s + b`` per network k, step and unit:
    s ~ U(1, 1 + n_k), b ~ U(-n_k, n_k) (``levels`` holds n_k; 0: no noise) in training.
    Input (K, N, C); the noise is (K, 1, C), shared by the batch. In evaluation the noise
    is replaced by its mean, ``h * (1 + n_k / 2)`` (as dropout is by its expectation: the
    network is evaluated on the scale it was trained on). With ``record`` a list, each call
    appends the per-unit batch mean and std of the noisy input, (K, C) each."""

    def __init__(self, levels: Tensor, generator: torch.Generator) -> None:
        super().__init__()
        if levels.dim() != 1 or bool((levels < 0).any()):
            raise ValueError(f"NoisyReLU: levels must be a vector >= 0, got {levels}")
        self.register_buffer("levels", levels.clone())
        self.generator = generator
        self.record: list[tuple[Tensor, Tensor]] | None = None

    def forward(self, h: Tensor) -> Tensor:
        if self.training and bool((self.levels > 0).any()):
            K, _, C = h.shape
            u = torch.rand(2, K, 1, C, generator=self.generator, dtype=h.dtype)
            n = self.levels.to(h.dtype).view(K, 1, 1)
            h = h * (1 + n * u[0]) + n * (2 * u[1] - 1)
        elif not self.training:
            h = h * (1 + self.levels.to(h.dtype).view(-1, 1, 1) / 2)
        if self.record is not None:
            sd, mu = torch.std_mean(h.detach(), dim=1, correction=0)
            self.record.append((mu, sd))
        return torch.relu(h)


def _layer_params(model: StackedMLP) -> list[list[str]]:
    """Parameter names of each Linear (+ its bias or BN), input layer first."""
    layers = []
    for index in range(1, model.hidden_layers + 1):
        stem = f"linear{index}"
        names = [f"{stem}_weight"]
        names += [f"{stem}_bn_weight", f"{stem}_bn_bias"] if model.batch_norm else [f"{stem}_bias"]
        layers.append(names)
    layers.append(["output_weight", "output_bias"])
    return layers


def _per_network_norm(tensors: Sequence[Tensor]) -> Tensor:
    """sqrt(sum of squares) of each network k over stacked tensors (K, ...): (K,)."""
    return torch.sqrt(sum(t.reshape(t.shape[0], -1).double().pow(2).sum(1) for t in tensors))


def _gradients(model: StackedMLP, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    params = dict(model.named_parameters())
    losses = stacked_cross_entropy(model(x), y)
    grads = torch.autograd.grad(losses.sum(), list(params.values()))
    return losses.detach(), dict(zip(params, grads, strict=True))


@torch.no_grad()
def _shift(model: StackedMLP, lrs: Tensor, grads: dict[str, Tensor], names: Sequence[str],
           factor: float) -> None:
    params = dict(model.named_parameters())
    for name in names:
        p = params[name]
        p.sub_(grads[name] * (factor * lrs).to(p.dtype).view(-1, *[1] * (p.dim() - 1)))


def layer_ics(model: StackedMLP, x: Tensor, y: Tensor, lrs: Tensor,
              noise: NoisyReLU | None = None) -> tuple[Tensor, Tensor]:
    """ICS of layers 2..L of every network on batch (x, y): (relative, cosine), each
    (K, L - 1): ``||G - G'|| / ||G||`` and ``cos(G, G')`` (see the module doc). The model's
    parameters, buffers and noise stream are left as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    noise_state = noise.generator.get_state() if noise is not None else None
    _, grads = _gradients(model, x, y)
    layers = _layer_params(model)
    relative, cosine = [], []
    for i in range(1, len(layers)):
        lower = [name for layer in layers[:i] for name in layer]
        _shift(model, lrs, grads, lower, 1.0)
        if noise is not None:
            noise.generator.set_state(noise_state)
        _, moved = _gradients(model, x, y)
        model.load_state_dict(state)
        if noise is not None:
            noise.generator.set_state(noise_state)
        name = layers[i][0]
        g, h = grads[name].double(), moved[name].double()
        K = g.shape[0]
        g, h = g.reshape(K, -1), h.reshape(K, -1)
        g_norm, h_norm = g.norm(dim=1), h.norm(dim=1)
        relative.append((g - h).norm(dim=1) / g_norm)
        cosine.append((g * h).sum(1) / (g_norm * h_norm))
    model.load_state_dict(state)
    return torch.stack(relative, 1), torch.stack(cosine, 1)


def probe_along_gradient(closure: Any, params: Sequence[Tensor], lrs: Tensor,
                         factors: Sequence[float]) -> dict[str, Tensor]:
    """The three landscape measures of K stacked problems (module doc), generic:
    ``closure()`` returns (losses (K,), gradients of ``params``) at the current ``params``
    (tensors (K, ...)); they are moved to theta - f * lr_k * g for each f and restored."""
    _, grads = closure()
    grads = [g.detach().clone() for g in grads]
    saved = [p.detach().clone() for p in params]
    g_norm = _per_network_norm(grads)
    losses, changes, betas = [], [], []
    for factor in factors:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g * (factor * lrs).to(p.dtype).view(-1, *[1] * (p.dim() - 1)))
        loss, moved = closure()
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
        change = _per_network_norm([g - m for g, m in zip(grads, moved, strict=True)])
        losses.append(loss.detach().double())
        changes.append(change)
        betas.append(change / (factor * lrs.double() * g_norm))
    stacked = torch.stack(losses)
    return {"loss_range": stacked.max(0).values - stacked.min(0).values,
            "grad_change": torch.stack(changes).max(0).values,
            "beta": torch.stack(betas).max(0).values}


def landscape(model: StackedMLP, x: Tensor, y: Tensor, lrs: Tensor,
              factors: Sequence[float], noise: NoisyReLU | None = None) -> dict[str, Tensor]:
    """:func:`probe_along_gradient` of every network of ``model`` on batch (x, y), all
    parameters, the same noise at every point; the model (buffers too) is left as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    noise_state = noise.generator.get_state() if noise is not None else None
    names = [name for name, _ in model.named_parameters()]

    def closure() -> tuple[Tensor, list[Tensor]]:
        if noise is not None:
            noise.generator.set_state(noise_state)
        losses, grads = _gradients(model, x, y)
        return losses, [grads[name] for name in names]

    result = probe_along_gradient(closure, list(model.parameters()), lrs, factors)
    if noise is not None:
        noise.generator.set_state(noise_state)
    model.load_state_dict(state)
    return result


def shift_between(before: Sequence[tuple[Tensor, Tensor]],
                  after: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Mean over hidden layers of ``mean_units(|mu' - mu| + |sd' - sd|)``: (K,)."""
    values = [((m1 - m0).abs() + (s1 - s0).abs()).double().mean(1)
              for (m0, s0), (m1, s1) in zip(before, after, strict=True)]
    return torch.stack(values).mean(0)


# --- training -----------------------------------------------------------------------------


def he_stack(K: int, sizes: Sequence[int], seeds: Sequence[int], *, batch_norm: bool,
             activation: Any) -> StackedMLP:
    """K networks, network k's weights N(0, 2 / fan_in) from its seed's init stream."""
    generators = [STREAMS.generator(seed, "init") for seed in seeds]
    model = StackedMLP(K, sizes, batch_norm=batch_norm, init_std=1.0, generators=generators,
                       activation=activation)
    with torch.no_grad():
        for weight, _ in model._linears():
            weight.mul_(math.sqrt(2.0 / weight.shape[1]))
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 2000) -> Tensor:
    """Each network's accuracy (K,) in eval mode."""
    was = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), chunk):
        logits = model(x[start:start + chunk])
        correct = correct + (logits.argmax(-1) == y[start:start + chunk]).double().sum(1)
    model.train(was)
    return correct / len(y)


def _train_stack(config: SanturkarConfig, split: Any, arm: str, levels: Sequence[float],
                 bar: Any) -> dict[str, Any]:
    """Train arm ``arm`` at every (level, lr, seed) in one stack; the per-network record."""
    grid = [(level, lr, seed) for level in levels for lr in config.lrs for seed in config.seeds]
    K = len(grid)
    seeds = [seed for _, _, seed in grid]
    noise = NoisyReLU(torch.tensor([level for level, _, _ in grid]),
                      torch.Generator().manual_seed(STREAMS(seeds[0])["noise"]))
    sizes = (784, *[config.width] * config.depth, 10)
    model = he_stack(K, sizes, seeds, batch_norm=arm != "plain", activation=lambda: noise)
    lrs = torch.tensor([lr for _, lr, _ in grid], dtype=torch.float64)
    data = {seed: STREAMS.generator(seed, "data") for seed in config.seeds}
    picks = torch.tensor([config.seeds.index(seed) for seed in seeds])
    n = len(split.train_y)
    probe_steps = {round(j * config.steps / config.probes) for j in range(config.probes)}
    record: dict[str, list[Any]] = {"ics": [], "cos": [], "loss_range": [], "grad_change": [],
                                    "beta": [], "shift": []}
    curve, window = [], torch.zeros(K, dtype=torch.float64)
    every = max(config.steps // 20, 1)
    before = None
    for step in range(config.steps):
        index = torch.stack([torch.randint(n, (config.batch,), generator=data[s])
                             for s in config.seeds]).index_select(0, picks)
        x, y = gather_batches(split.train_x, index), gather_batches(split.train_y, index)
        if step in probe_steps:
            relative, cosine = layer_ics(model, x, y, lrs, noise)
            record["ics"].append(relative.mean(1).tolist())
            record["cos"].append(cosine.mean(1).tolist())
            for key, value in landscape(model, x, y, lrs, config.factors, noise).items():
                record[key].append(value.tolist())
            noise.record = []
        losses, grads = _gradients(model, x, y)
        _shift(model, lrs, grads, list(grads), 1.0)
        if noise.record is not None:
            if before is None:
                before, noise.record = noise.record, []
            else:
                record["shift"].append(shift_between(before, noise.record).tolist())
                before, noise.record = None, None
        window += losses.double()
        if (step + 1) % every == 0:
            curve.append((window / every).tolist())
            window.zero_()
        bar.advance_to(step + 1)
    val = accuracy(model, split.val_x, split.val_y)
    test = accuracy(model, split.test_x, split.test_y)
    networks = []
    for k, (level, lr, seed) in enumerate(grid):
        entry = {"level": level, "lr": lr, "seed": seed, "val": _finite(val[k]),
                 "test": _finite(test[k]), "curve": [_finite(row[k]) for row in curve]}
        for key, rows in record.items():
            entry[key] = [_finite(row[k]) for row in rows]
        networks.append(entry)
    return {"networks": networks, "curve_every": every}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def trainings(config: SanturkarConfig, context: ClaimContext,
              arms: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per arm, its networks' records (memoized, one stack per arm)."""
    split = None
    out = {}
    for arm in arms:
        levels = config.noise if arm == "noisy" else (0.0,)
        version = NOISY_VERSION if arm == "noisy" else VERSION
        key = {"version": version, "arm": arm, "levels": list(levels), **config.to_dict()}
        key.pop("noise")

        def compute(arm: str = arm, levels: Sequence[float] = levels) -> dict[str, Any]:
            nonlocal split
            if split is None:
                split = load_split(context, config.dataset, train=config.train,
                                   val=config.val, test=config.test)
            with context.bar(config.steps, f"train {arm}") as bar:
                bar.start()
                return _train_stack(config, split, arm, levels, bar)

        out[arm] = context.memo(key, compute)["networks"]
    return out


# --- choosing rates and summarizing -------------------------------------------------------


def select(networks: Sequence[dict[str, Any]], level: float = 0.0) -> tuple[float, list[dict]]:
    """The rate with the best mean validation accuracy at ``level`` and its networks by seed."""
    rows = [n for n in networks if n["level"] == level]
    lrs = sorted({n["lr"] for n in rows})

    def score(lr: float) -> float:
        return float(np.mean([n["val"] or 0.0 for n in rows if n["lr"] == lr]))

    best = max(lrs, key=score)
    return best, sorted((n for n in rows if n["lr"] == best), key=lambda n: n["seed"])


def at_rate(networks: Sequence[dict[str, Any]], lr: float, level: float = 0.0) -> list[dict]:
    return sorted((n for n in networks if n["level"] == level and n["lr"] == lr),
                  key=lambda n: n["seed"])


def _mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if len(finite) == len(values) and finite else math.inf


def _log_ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        return math.nan
    return math.log(a / b)


# --- the verdict rules (pure functions of per-seed numbers) -------------------------------

ICS_RULE = Rule("BN does not reduce internal covariate shift",
                "log(ICS with BN / ICS without BN), seed-paired", "greater", ICS_MARGIN)


def ics_verdict(bn: Sequence[float], plain: Sequence[float]) -> tuple[Verdict, Interval]:
    """Santurkar's claim from per-seed mean relative ICS ``||G - G'|| / ||G||`` of the BN
    and the plain network: the interval of log(bn / plain) over seeds; supported if it lies
    above log(0.8) (BN does not cut ICS by more than 20%), not supported if below."""
    ratios = [_log_ratio(a, b) for a, b in zip(bn, plain, strict=True)]
    if any(math.isnan(r) for r in ratios):
        return MIXED, Interval(math.nan, None, None, len(ratios))
    interval = mean_interval(ratios)
    return decide(ICS_RULE, interval), interval


ACCURACY_RULE = Rule("noisy BN trains as well as BN", "test accuracy noisy BN - BN",
                     "greater", ACCURACY_MARGIN)


def noisy_verdict(noisy_acc: Sequence[float], bn_acc: Sequence[float],
                  noisy_shift: Sequence[float], bn_shift: Sequence[float]
                  ) -> tuple[Verdict, Interval, Interval]:
    """One noise level: the accuracy verdict (paired noisy - BN test accuracy against -1
    point) and the interval of log(shift noisy / shift BN). A supported accuracy verdict
    is downgraded to mixed unless the shift interval lies above log(2) (far larger shift)."""
    accuracy = paired_interval(noisy_acc, bn_acc)
    verdict = decide(ACCURACY_RULE, accuracy)
    ratios = [_log_ratio(a, b) for a, b in zip(noisy_shift, bn_shift, strict=True)]
    shift = mean_interval([0.0 if math.isnan(r) else r for r in ratios])
    if verdict == SUPPORTED and not (shift.low is not None and shift.low > math.log(SHIFT_RATIO)):
        verdict = MIXED
    return verdict, accuracy, shift


SMOOTH_RULE = Rule("BN makes the landscape smoother", "log(BN / no-BN)", "less", 0.0)
SMOOTH_KEYS = ("loss_range", "grad_change", "beta")


def smoothness_verdict(bn: dict[str, Sequence[float]], plain: dict[str, Sequence[float]]
                       ) -> tuple[Verdict, dict[str, Interval]]:
    """Per measure (loss range, gradient change, beta), per-seed values of each arm: the
    interval of log(bn / plain); each is supported if below 0; the verdict combines the
    three (all agree, or mixed)."""
    intervals, verdicts = {}, []
    for key in SMOOTH_KEYS:
        ratios = [_log_ratio(a, b) for a, b in zip(bn[key], plain[key], strict=True)]
        if any(math.isnan(r) for r in ratios):
            intervals[key] = Interval(math.nan, None, None, len(ratios))
            verdicts.append(MIXED)
            continue
        intervals[key] = mean_interval(ratios)
        verdicts.append(decide(SMOOTH_RULE, intervals[key]))
    return combine(verdicts), intervals


# --- finding texts (pure functions of the intervals) ---------------------------------------


def ratio_text(interval: Interval) -> str:
    """A log-ratio interval as a ratio: ``"0.81x [0.77, 0.86]"``."""
    if not math.isfinite(interval.mean):
        return "not finite"
    text = f"{math.exp(interval.mean):.2f}x"
    if interval.low is None or interval.high is None:
        return f"{text} (n={interval.n}, no interval)"
    return f"{text} [{math.exp(interval.low):.2f}, {math.exp(interval.high):.2f}]"


def ics_finding(interval: Interval, margin: float = ICS_MARGIN) -> str:
    """What the interval of log(ICS BN / ICS no BN) says, from where it lies relative to 0
    (no change) and to ``margin`` (the rule's log(0.8)); it agrees with :func:`ics_verdict`."""
    zero, edge = interval.side(0.0), interval.side(margin)
    ratio, cut = ratio_text(interval), f"{1 - math.exp(margin):.0%}"
    head = f"BN's relative ICS is {ratio} the plain network's"
    if zero == "unknown":
        return (f"{head}: no interval (a non-finite value or too few seeds), so the seeds "
                "cannot tell whether BN reduces ICS; the rule says mixed.")
    if zero == "above":
        return (f"{head}: higher, as Santurkar et al. report (BN does not reduce ICS; "
                "often it has more), so the rule says supported.")
    if edge == "below":
        return (f"{head}: lower by more than the {cut} margin fixed before the run, so BN "
                "reduced ICS here, against Santurkar et al.; the rule says not supported.")
    if zero == "below" and edge == "above":
        return (f"{head}: lower, against the letter of Santurkar et al.'s claim (no less "
                f"ICS), but by less than the {cut} margin fixed before the run, so the rule "
                "says supported.")
    if edge == "above":  # straddles 0, above the margin
        return (f"{head}: the seeds cannot tell it from the plain network's, and it is at "
                f"most {cut} lower, so BN did not reduce ICS beyond the margin, as Santurkar "
                "et al. report; the rule says supported.")
    if zero == "below":  # below 0, straddles the margin
        return (f"{head}: lower (the interval lies below 1), against Santurkar et al.'s "
                f"claim; whether by more than the {cut} margin fixed before the run the "
                f"seeds cannot tell (the interval contains {math.exp(margin):.2f}), so the "
                "rule says mixed.")
    return (f"{head}: the interval contains both 1 (no change) and {math.exp(margin):.2f} "
            f"(the {cut} margin), so the seeds cannot tell whether BN reduces ICS; the rule "
            "says mixed.")


def noisy_level_text(level: float, accuracy: Interval, shift: Interval) -> str:
    """One noise level's accuracy and shift, each said from its interval's position."""
    acc = {"above": "within 1 point of BN", "below": "more than 1 point behind BN",
           "straddles": "the seeds cannot tell whether within 1 point of BN",
           "unknown": "no interval"}[accuracy.side(ACCURACY_MARGIN)]
    moved = {"above": f"more than {SHIFT_RATIO:g}x BN's",
             "below": f"less than {SHIFT_RATIO:g}x BN's",
             "straddles": f"not clearly more than {SHIFT_RATIO:g}x BN's",
             "unknown": "no interval"}[shift.side(math.log(SHIFT_RATIO))]
    return (f"n={level:g}: {accuracy.format(100, 2)} points ({acc}), input shift "
            f"{ratio_text(shift)} ({moved})")


def smoothness_text(intervals: dict[str, Interval], names: dict[str, str]) -> str:
    """Which measures BN made smaller, larger, or the seeds cannot tell (interval vs 0)."""
    groups: dict[str, list[str]] = {}
    for key in SMOOTH_KEYS:
        groups.setdefault(intervals[key].side(0.0), []).append(
            f"{names[key]} {ratio_text(intervals[key])}")
    parts = []
    for where, say in (("below", "smaller with BN"), ("above", "larger with BN"),
                       ("straddles", "the seeds cannot tell"),
                       ("unknown", "not measurable (non-finite or no interval)")):
        if where in groups:
            parts.append(f"{say}: {'; '.join(groups[where])}")
    return "BN / no BN: " + " | ".join(parts) + "."


# --- the claims ---------------------------------------------------------------------------


def _curve_plot(context: ClaimContext, name: str, series: dict[str, list[dict]], key: str,
                ylabel: str, every: int = 1, log: bool = False) -> str:
    path = context.folder / f"{name}.png"

    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        for label, rows in series.items():
            table = np.array([[np.nan if v is None else v for v in row[key]] for row in rows])
            if table.size == 0:
                continue
            x = np.arange(table.shape[1]) * every
            mean_band(axis, x, table, label=label)
        axis.set_xlabel("probe" if every == 1 else "step")
        axis.set_ylabel(ylabel)
        if log:
            axis.set_yscale("log")
        axis.legend()

    save_plot(path, (6, 4), draw)
    return context.relative(path)


def _run_ics(config: SanturkarConfig, context: ClaimContext) -> ClaimResult:
    runs = trainings(config, context, ("plain", "bn"))
    lr_plain, plain = select(runs["plain"])
    lr_bn, bn = select(runs["bn"])
    ics_bn = [_mean(n["ics"]) for n in bn]
    ics_plain = [_mean(n["ics"]) for n in plain]
    verdict, interval = ics_verdict(ics_bn, ics_plain)
    same = at_rate(runs["bn"], lr_plain)
    same_verdict, same_interval = ics_verdict([_mean(n["ics"]) for n in same], ics_plain)
    cos_bn = mean_interval([_mean(n["cos"]) for n in bn])
    cos_plain = mean_interval([_mean(n["cos"]) for n in plain])
    plot = _curve_plot(context, "ics", {f"no BN (lr {lr_plain:g})": plain,
                                        f"BN (lr {lr_bn:g})": bn}, "ics",
                       "||G - G'|| / ||G|| (mean over layers 2..L)", log=True)
    finding = (f"At their tuned rates (no BN {lr_plain:g}, BN {lr_bn:g}; log ratio "
               f"{interval.format(digits=3)}): {ics_finding(interval)} At the same rate "
               f"{lr_plain:g}: "
               f"{ratio_text(same_interval)} ({same_verdict}).")
    rows = ["| arm | lr | rel. ICS mean [95%] | cos(G, G') [95%] | test acc [95%] |",
            "|---|---|---|---|---|"]
    for label, lr, nets, cos in (("no BN", lr_plain, plain, cos_plain), ("BN", lr_bn, bn, cos_bn)):
        ics = mean_interval([_mean(n["ics"]) for n in nets])
        test = mean_interval([n["test"] or 0 for n in nets])
        rows.append(f"| {label} | {lr:g} | {ics.format(digits=3)} | {cos.format(digits=3)} | "
                    f"{test.format(digits=3)} |")
    section = "\n".join([
        f"ReLU MLP 784-{config.width}x{config.depth}-10 on {config.dataset}, {config.steps} "
        f"SGD steps of {config.batch}, {len(config.seeds)} seeds, rates {list(config.lrs)} "
        f"tuned per arm on validation; ICS at {config.probes} points of training.", "",
        *rows, "", f"![ICS over training]({plot})"])
    return ClaimResult(verdict, "log(rel. ICS BN / no BN), tuned rates", interval, finding,
                       section, {"lr": {"plain": lr_plain, "bn": lr_bn}, "ics_bn": ics_bn,
                                 "ics_plain": ics_plain,
                                 "same_rate": same_interval.to_dict()}, (plot,))


def _run_noisy(config: SanturkarConfig, context: ClaimContext) -> ClaimResult:
    runs = trainings(config, context, ("plain", "bn", "noisy"))
    lr_plain, plain = select(runs["plain"])
    lr_bn, bn = select(runs["bn"])
    bn_acc = [n["test"] or 0.0 for n in bn]
    bn_shift = [_mean(n["shift"]) for n in bn]
    verdicts, rows, details, series = [], [], {}, {"BN": bn, "no BN": plain}
    texts = []
    last = None
    for level in config.noise:
        lr, nets = select(runs["noisy"], level)
        verdict, acc, shift = noisy_verdict([n["test"] or 0.0 for n in nets], bn_acc,
                                            [_mean(n["shift"]) for n in nets], bn_shift)
        verdicts.append(verdict)
        texts.append(noisy_level_text(level, acc, shift))
        last = acc
        series[f"noisy n={level:g}"] = nets
        rows.append(f"| noisy BN n={level:g} | {lr:g} | {_final_loss(nets)} | "
                    f"{mean_interval([n['test'] or 0 for n in nets]).format(100, 2)} | "
                    f"{acc.format(100, 2)} | {shift.format(1, 2)} | {verdict} |")
        details[str(level)] = {"lr": lr, "accuracy": acc.to_dict(), "log_shift": shift.to_dict()}
    verdict = combine(verdicts)
    plain_gap = paired_interval([n["test"] or 0.0 for n in plain], bn_acc)
    plot = _curve_plot(context, "noisy_loss", series, "curve", "training loss",
                       every=max(config.steps // 20, 1), log=True)
    finding = ("Noisy BN minus BN, test accuracy: " + "; ".join(texts)
               + f" (no BN: {plain_gap.format(100, 2)} points). Final training loss (with "
               f"its noise) BN {_final_loss(bn)}, noisy "
               + ", ".join(f"n={lv:g}: {_final_loss(select(runs['noisy'], lv)[1])}"
                           for lv in config.noise) + ". ")
    by = {v: [f"{lv:g}" for lv, w in zip(config.noise, verdicts, strict=True) if w == v]
          for v in ("supported", "not supported", "mixed")}
    finding += {"supported": "At every level noisy BN trains within 1 point of BN despite a "
                             "far larger shift of its layers' inputs, as Santurkar et al. "
                             "report.",
                "not supported": "At every level noisy BN falls more than 1 point behind BN, "
                                 "against Santurkar et al.",
                "mixed": "The levels do not agree, so the claim holds only partly here: "
                         + "; ".join(f"{name} at n={', '.join(by[v])}" for v, name in (
                             ("supported", "holds"), ("not supported", "fails"),
                             ("mixed", "undecided")) if by[v]) + "."}[verdict]
    section = "\n".join([
        f"Same networks and data as `ics`; noise s ~ U(1, 1+n), b ~ U(-n, n) per step and "
        f"unit after BN. Shift: mean over units and layers of |d mu| + |d sd| of the ReLU "
        f"input between consecutive steps, at {config.probes} points. BN: lr {lr_bn:g}, "
        f"test {mean_interval(bn_acc).format(100, 2)}%; no BN: lr {lr_plain:g}, "
        f"{mean_interval([n['test'] or 0 for n in plain]).format(100, 2)}%.", "",
        "| arm | lr | final training loss | test acc % [95%] | minus BN (points) | "
        "log(shift / BN's) | verdict |", "|---|---|---|---|---|---|---|",
        f"| BN | {lr_bn:g} | {_final_loss(bn)} | {mean_interval(bn_acc).format(100, 2)} | | | |",
        *rows, "", f"![training loss]({plot})"])
    return ClaimResult(verdict, f"test acc noisy BN (n={config.noise[-1]:g}) - BN",
                       last, finding, section, details, (plot,))


def _final_loss(nets: Sequence[dict]) -> str:
    """Seed-mean training loss of the last curve window (with the noise, for noisy BN)."""
    last = [n["curve"][-1] for n in nets if n["curve"]]
    return "diverged" if len(last) < len(nets) or None in last else f"{np.mean(last):.3f}"


def _landscape_values(nets: Sequence[dict]) -> dict[str, list[float]]:
    return {key: [_mean(n[key]) for n in nets] for key in SMOOTH_KEYS}


def _run_smoothness(config: SanturkarConfig, context: ClaimContext) -> ClaimResult:
    runs = trainings(config, context, ("plain", "bn"))
    lr_plain, plain = select(runs["plain"])
    lr_bn, bn = select(runs["bn"])
    same = at_rate(runs["bn"], lr_plain)
    verdict, intervals = smoothness_verdict(_landscape_values(same), _landscape_values(plain))
    tuned_verdict, tuned = smoothness_verdict(_landscape_values(bn), _landscape_values(plain))
    names = {"loss_range": "loss range", "grad_change": "gradient predictiveness max||dg||",
             "beta": "effective beta-smoothness"}
    rows = [f"| {names[k]} | {intervals[k].format(1, 2)} | {tuned[k].format(1, 2)} |"
            for k in SMOOTH_KEYS]
    plots = tuple(_curve_plot(context, key, {f"no BN (lr {lr_plain:g})": plain,
                                             f"BN (lr {lr_plain:g})": same}, key, names[key],
                              log=True) for key in SMOOTH_KEYS)
    beta = intervals["beta"]
    smaller = [names[k] for k in SMOOTH_KEYS if intervals[k].side(0.0) == "below"]
    finding = (f"At the same rate {lr_plain:g} (no BN's tuned rate), "
               f"{smoothness_text(intervals, names)} -> {verdict}; at each arm's tuned rate "
               f"({lr_bn:g} for BN): {tuned_verdict}. ")
    finding += {"supported": "BN made all three smaller, as Santurkar et al. report.",
                "not supported": "BN made all three larger, against Santurkar et al.",
                "mixed": (f"Only {', '.join(smaller)} came out clearly smaller with BN, so the "
                          "smoothing claim holds only partly here." if smaller else
                          "No measure is clearly smaller with BN, so the smoothing claim "
                          "is not shown here.")}[verdict]
    section = "\n".join([
        f"Networks of `ics`; at {config.probes} points of training, steps of "
        f"{list(config.factors)} x lr along the gradient (same batch); per seed the mean "
        "over points. Log ratios BN / no BN (negative: BN smoother):", "",
        f"| measure | same rate {lr_plain:g} | tuned rates |", "|---|---|---|", *rows, "",
        *[f"![{k}]({p})" for k, p in zip(SMOOTH_KEYS, plots, strict=True)]])
    return ClaimResult(verdict, "log(beta-smoothness BN / no BN), same rate", beta, finding,
                       section, {"same_rate": {k: v.to_dict() for k, v in intervals.items()},
                                 "tuned": {k: v.to_dict() for k, v in tuned.items()}}, plots)


_SETUP = ("ReLU MLPs on MNIST (He init, plain SGD, rates tuned per arm on validation, "
          "seed-paired arms)")

ICS = ClaimSpec(
    id="ics", title="BN does not reduce internal covariate shift",
    source="Santurkar et al. 2018",
    statement="Measured as the change of a layer's gradient when the layers below take "
              "their update, BN networks have no less internal covariate shift than plain "
              "ones (often more).",
    measured=f"{_SETUP}: ||G - G'|| / ||G|| and cos(G, G') per layer at points of training.",
    rule=f"{ICS_RULE.describe()} (log(0.8): BN cuts ICS by at most 20%); each arm at its "
         "tuned rate",
    presets=PRESETS, run=_run_ics)

NOISY_BN = ClaimSpec(
    id="noisy-bn", title="Noisy BN trains as well as BN",
    source="Santurkar et al. 2018",
    statement="BN followed by non-stationary random shift and scale noise, which makes "
              "the layers' input distributions shift far more, trains about as well as BN.",
    measured=f"{_SETUP}: test accuracy of noisy BN (n in the noise grid) against BN, and the "
             "step-to-step shift of each layer's input mean and std.",
    rule=f"per noise level: {ACCURACY_RULE.describe()}; a supported level needs its "
         "log(shift / BN's shift) interval above log(2), else mixed; levels combined "
         "(all agree, or mixed)",
    presets=PRESETS, run=_run_noisy)

SMOOTHNESS = ClaimSpec(
    id="smoothness", title="BN smooths the loss landscape",
    source="Santurkar et al. 2018",
    statement="BN makes the loss change less along the gradient, the gradient more "
              "predictive and the effective beta-smoothness smaller.",
    measured=f"{_SETUP}: along the gradient, steps f x lr (f in the factor grid): loss range, "
             "max ||g - g'|| and max ||g - g'|| / ||step||, BN and no BN at no BN's tuned rate.",
    rule=f"per measure: {SMOOTH_RULE.describe()}; the three combined (all agree, or mixed)",
    presets=PRESETS, run=_run_smoothness)
