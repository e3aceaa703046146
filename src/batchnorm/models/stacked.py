"""Many small networks as one: K copies of :class:`batchnorm.models.mlp.MLP`, stacked.

A training step of the paper's 784-100-100-100-10 network at batch 60 is a few dozen
tiny kernels, so its cost is framework overhead, not arithmetic. :class:`StackedMLP`
holds K such networks as stacked parameters (weights ``(K, in, out)``, biases
``(K, 1, out)``, BN gamma/beta and running statistics ``(K, units)``) and computes all
of them with one batched matmul per layer, so a grid of seeds x learning rates x arms
costs little more per step than a single network::

    model = StackedMLP(K, batch_norm=True, init_std=1.0,
                       generators=[torch.Generator().manual_seed(s) for s in seeds])
    optimizer = StackedSGD(model, lrs=torch.tensor([...]))          # one lr per network
    x, y = gather_batches(train_x, index), gather_batches(train_y, index)  # index (K, N)
    losses = stacked_cross_entropy(model(x), y)                     # (K,)
    optimizer.zero_grad(); losses.sum().backward(); optimizer.step()

Network k is exactly the network ``MLP(sizes, batch_norm=..., init_std=s,
generator=generators[k])`` would build and :func:`torch.optim.SGD` would train: the
loss is the sum of the networks' mean cross-entropies, so network k's gradient is its
standalone gradient; BN normalizes each network over its own batch with this project's
:func:`batchnorm.batch_norm` (one call per layer on the ``(N, K * units)`` view, so that
every network and unit has its own statistics, momentum, eps and torch's running
statistics convention). :meth:`StackedMLP.to_mlp` and :meth:`StackedMLP.from_mlps`
convert to and from standalone networks (for evaluation with the existing tools).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchnorm.functional import batch_norm
from batchnorm.layers import BatchNorm1d
from batchnorm.models.mlp import MLP, PAPER_SIZES

__all__ = [
    "StackedMLP",
    "StackedOutputs",
    "StackedSGD",
    "gather_batches",
    "stacked_cross_entropy",
]

_BN_KEYS = ("eps", "momentum", "estimator", "backend")


@dataclass
class StackedOutputs:
    """What :meth:`StackedMLP.forward_with_preactivations` returns.

    ``logits``: (K, N, classes). ``preactivations``: per hidden layer, the input of its
    nonlinearity, (K, N, units) (``Wu + b``, or ``BN(Wu)`` with BN: what
    :meth:`MLP.forward_with_preactivations` returns). ``normalized``: with BN, per hidden
    layer the normalized x-hat (before gamma and beta), (K, N, units); None without BN.
    """

    logits: Tensor
    preactivations: list[Tensor]
    normalized: list[Tensor] | None


def gather_batches(data: Tensor, indices: Tensor) -> Tensor:
    """``data[indices]`` by one ``index_select``: (M, *) and (K, N) -> (K, N, *).

    For the training images (M, 784) this gives the stacked input (K, N, 784); for the
    labels (M,) the stacked targets (K, N).
    """
    if indices.dim() != 2 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"gather_batches: indices must be an integer (K, N) tensor, got dtype "
            f"{indices.dtype} and shape {tuple(indices.shape)}"
        )
    flat = data.index_select(0, indices.reshape(-1))
    return flat.view(*indices.shape, *data.shape[1:])


def stacked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Each network's mean cross-entropy, shape (K,), from logits (K, N, C).

    ``targets`` is (K, N) (each network its own labels) or (N,) (shared). Sum the result
    before ``backward``: network k then gets exactly its standalone gradient.
    """
    if logits.dim() != 3:
        raise ValueError(
            f"stacked_cross_entropy: expected logits of shape (K, N, classes), got "
            f"{tuple(logits.shape)}"
        )
    K, N, classes = logits.shape
    if targets.shape == (N,):
        targets = targets.expand(K, N)
    if targets.shape != (K, N):
        raise ValueError(
            f"stacked_cross_entropy: expected targets of shape ({K}, {N}) or ({N},) for "
            f"logits of shape {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    losses = F.cross_entropy(logits.reshape(K * N, classes), targets.reshape(K * N),
                             reduction="none")
    return losses.view(K, N).mean(dim=1)


def _check_bn_kwargs(bn_kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(bn_kwargs) - set(_BN_KEYS))
    if unknown:
        raise ValueError(
            f"StackedMLP: unsupported bn_kwargs {unknown}; supported: {list(_BN_KEYS)}"
        )
    momentum = bn_kwargs.get("momentum", 0.1)
    estimator = bn_kwargs.get("estimator", "cumulative" if momentum is None else "ema")
    if estimator not in ("ema", "cumulative") or (estimator == "ema") == (momentum is None):
        raise ValueError(
            f"StackedMLP: estimator {estimator!r} with momentum {momentum!r} is not supported; "
            "use 'ema' with a momentum or 'cumulative' (momentum=None)"
        )
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"StackedMLP: momentum must be in [0, 1] or None, got {momentum}")
    if not bn_kwargs.get("eps", 1e-5) > 0:
        raise ValueError(f"StackedMLP: eps must be positive, got {bn_kwargs['eps']}")
    return dict(bn_kwargs)


class StackedMLP(nn.Module):
    """K networks ``sizes[0] -> ... -> sizes[-1]`` (:class:`MLP`) computed together.

    Args:
        num_networks: K.
        sizes: layer widths, input first, classes last (as :class:`MLP`).
        batch_norm: BN before every hidden nonlinearity, the hidden Linear without bias.
        init_std: weights ~ N(0, init_std^2), biases 0, network k drawn from
            ``generators[k]`` in exactly :class:`MLP`'s order (so it equals
            ``MLP(sizes, batch_norm=..., init_std=init_std, generator=generators[k])``);
            None: torch's default initialization, K standalone MLPs built in turn.
        generators: one ``torch.Generator`` per network (None: the global generator).
        bn_kwargs: ``eps``, ``momentum`` (None: cumulative average), ``estimator``
            (``"ema"``/``"cumulative"``), ``backend`` (of :func:`batchnorm.batch_norm`).
        activation: factory of the hidden nonlinearity module (the paper: sigmoid).

    Input: (K, N, sizes[0]), each network its own batch, or (N, sizes[0]) for all.
    Output: logits (K, N, sizes[-1]). Convert with ``.double()``/``.to()`` as usual.
    """

    def __init__(
        self,
        num_networks: int,
        sizes: Sequence[int] = PAPER_SIZES,
        *,
        batch_norm: bool = False,
        init_std: float | None = None,
        generators: Sequence[torch.Generator] | None = None,
        bn_kwargs: dict[str, Any] | None = None,
        activation: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        if isinstance(num_networks, bool) or not isinstance(num_networks, int) or num_networks < 1:
            raise ValueError(
                f"StackedMLP: num_networks must be a positive int, got {num_networks!r}"
            )
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(
            isinstance(size, bool) or not isinstance(size, int) or size <= 0 for size in sizes
        ):
            raise ValueError(f"StackedMLP: sizes must be at least two positive ints, got {sizes}")
        if generators is not None and len(generators) != num_networks:
            raise ValueError(
                f"StackedMLP: got {len(generators)} generators for {num_networks} networks"
            )
        if init_std is not None and not init_std > 0:
            raise ValueError(f"StackedMLP: init std must be positive, got {init_std}")
        self.num_networks = num_networks
        self.sizes = sizes
        self.batch_norm = bool(batch_norm)
        self.bn_kwargs = _check_bn_kwargs(bn_kwargs or {})
        self.eps = float(self.bn_kwargs.get("eps", 1e-5))
        self.momentum = self.bn_kwargs.get("momentum", 0.1)
        self.backend = self.bn_kwargs.get("backend", "auto")
        self.activation_factory = activation
        self.activation = activation()
        self.hidden_layers = len(sizes) - 2
        K = num_networks
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes[:-1]), 1):
            name = f"linear{index}"
            self.register_parameter(f"{name}_weight", nn.Parameter(torch.empty(K, fan_in, fan_out)))
            if self.batch_norm:
                self.register_parameter(f"{name}_bn_weight", nn.Parameter(torch.ones(K, fan_out)))
                self.register_parameter(f"{name}_bn_bias", nn.Parameter(torch.zeros(K, fan_out)))
                self.register_buffer(f"{name}_bn_running_mean", torch.zeros(K, fan_out))
                self.register_buffer(f"{name}_bn_running_var", torch.ones(K, fan_out))
                self.register_buffer(
                    f"{name}_bn_num_batches_tracked", torch.zeros((), dtype=torch.long)
                )
            else:
                self.register_parameter(f"{name}_bias", nn.Parameter(torch.zeros(K, 1, fan_out)))
        self.output_weight = nn.Parameter(torch.empty(K, sizes[-2], sizes[-1]))
        self.output_bias = nn.Parameter(torch.zeros(K, 1, sizes[-1]))
        if init_std is None:
            # torch's default initialization, network by network as K MLPs would draw it.
            for k in range(K):
                self._load_network(k, MLP(sizes, batch_norm=self.batch_norm))
        else:
            self._gaussian_init(init_std, generators)

    # --- construction and conversion ------------------------------------------------------

    def _linears(self) -> list[tuple[Tensor, Tensor | None]]:
        """(weight (K, in, out), bias (K, 1, out) or None) of every Linear, input first."""
        layers = []
        for index in range(1, self.hidden_layers + 1):
            bias = None if self.batch_norm else getattr(self, f"linear{index}_bias")
            layers.append((getattr(self, f"linear{index}_weight"), bias))
        layers.append((self.output_weight, self.output_bias))
        return layers

    @torch.no_grad()
    def _gaussian_init(self, std: float, generators: Sequence[torch.Generator] | None) -> None:
        # MLP draws each Linear's (out, in) weight with normal_ in module order.
        for k in range(self.num_networks):
            generator = None if generators is None else generators[k]
            for weight, bias in self._linears():
                drawn = torch.empty(weight.shape[2], weight.shape[1], dtype=weight.dtype)
                drawn.normal_(0.0, std, generator=generator)
                weight[k].copy_(drawn.t())
                if bias is not None:
                    bias[k].zero_()

    def _bn_names(self) -> list[str]:
        return [f"linear{index}_bn" for index in range(1, self.hidden_layers + 1)]

    @torch.no_grad()
    def _load_network(self, k: int, mlp: MLP) -> None:
        """Copy ``mlp``'s parameters and buffers into network k."""
        modules = dict(mlp.named_children())
        names = [f"linear{index}" for index in range(1, self.hidden_layers + 1)] + ["output"]
        for name, (weight, bias) in zip(names, self._linears(), strict=True):
            linear = modules.get(name)
            if not isinstance(linear, nn.Linear) or linear.weight.shape != weight.shape[:0:-1]:
                raise ValueError(f"StackedMLP: network {k} has no Linear {name!r} of this shape")
            if (linear.bias is None) != (bias is None):
                raise ValueError(f"StackedMLP: network {k}'s {name!r} bias does not match")
            weight[k].copy_(linear.weight.t())
            if bias is not None:
                bias[k, 0].copy_(linear.bias)
        for name in self._bn_names() if self.batch_norm else []:
            bn = modules[name]
            getattr(self, f"{name}_weight")[k].copy_(bn.weight)
            getattr(self, f"{name}_bias")[k].copy_(bn.bias)
            getattr(self, f"{name}_running_mean")[k].copy_(bn.running_mean)
            getattr(self, f"{name}_running_var")[k].copy_(bn.running_var)
            getattr(self, f"{name}_num_batches_tracked").copy_(bn.num_batches_tracked)

    @classmethod
    def from_mlps(cls, mlps: Sequence[MLP]) -> StackedMLP:
        """A stack holding copies of ``mlps`` (same sizes, BN settings and activation)."""
        if not mlps:
            raise ValueError("StackedMLP.from_mlps: got no networks")
        first = mlps[0]
        children = dict(first.named_children())
        with_bn = "linear1_bn" in children
        activations = [m for m in first.children()
                       if not isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm))]
        activation = type(activations[0]) if activations else nn.Sigmoid
        bn_kwargs: dict[str, Any] = {}
        if with_bn:
            bn = children["linear1_bn"]
            if not (bn.affine and bn.track_running_stats):
                raise ValueError("StackedMLP.from_mlps: BN layers must be affine and track stats")
            if getattr(bn, "estimator", None) not in (None, "ema", "cumulative"):
                raise ValueError(
                    f"StackedMLP.from_mlps: BN estimator {bn.estimator!r} is not supported"
                )
            bn_kwargs = {"eps": bn.eps, "momentum": bn.momentum}
            if getattr(bn, "backend", "auto") != "auto":
                bn_kwargs["backend"] = bn.backend
        for k, mlp in enumerate(mlps):
            signature = _describe(mlp)
            if signature != _describe(first):
                raise ValueError(
                    f"StackedMLP.from_mlps: network {k} ({signature}) differs from network 0 "
                    f"({_describe(first)})"
                )
        if with_bn:
            counts = {tuple(int(m.get_submodule(f"linear{i}_bn").num_batches_tracked)
                            for i in range(1, len(first.sizes) - 1)) for m in mlps}
            if len(counts) > 1:
                raise ValueError(
                    "StackedMLP.from_mlps: the networks' BN layers tracked different numbers "
                    f"of batches {sorted(counts)}; a stack keeps one count per layer"
                )
        reference = first.output.weight
        with torch.random.fork_rng(devices=[]):  # the placeholder init must not move the RNG
            stack = cls(len(mlps), first.sizes, batch_norm=with_bn, init_std=1.0,
                        bn_kwargs=bn_kwargs, activation=activation)
        stack = stack.to(device=reference.device, dtype=reference.dtype)
        for k, mlp in enumerate(mlps):
            stack._load_network(k, mlp)
        return stack

    @torch.no_grad()
    def to_mlp(self, k: int) -> MLP:
        """Network k as a standalone :class:`MLP` with identical parameters and buffers."""
        if not -self.num_networks <= k < self.num_networks:
            raise IndexError(f"StackedMLP.to_mlp: network {k} of {self.num_networks}")
        k %= self.num_networks
        with torch.random.fork_rng(devices=[]):  # MLP's default init must not move the RNG
            mlp = MLP(self.sizes, batch_norm=self.batch_norm, activation=self.activation_factory,
                      bn_layer=BatchNorm1d, bn_kwargs=self.bn_kwargs)
        reference = self.output_weight
        mlp = mlp.to(device=reference.device, dtype=reference.dtype)
        modules = dict(mlp.named_children())
        names = [f"linear{index}" for index in range(1, self.hidden_layers + 1)] + ["output"]
        for name, (weight, bias) in zip(names, self._linears(), strict=True):
            modules[name].weight.copy_(weight[k].t())
            if bias is not None:
                modules[name].bias.copy_(bias[k, 0])
        for name in self._bn_names() if self.batch_norm else []:
            bn = modules[name]
            bn.weight.copy_(getattr(self, f"{name}_weight")[k])
            bn.bias.copy_(getattr(self, f"{name}_bias")[k])
            bn.running_mean.copy_(getattr(self, f"{name}_running_mean")[k])
            bn.running_var.copy_(getattr(self, f"{name}_running_var")[k])
            bn.num_batches_tracked.copy_(getattr(self, f"{name}_num_batches_tracked"))
        mlp.train(self.training)
        return mlp

    # --- forward --------------------------------------------------------------------------

    def _check_input(self, input: Tensor) -> Tensor:
        K, fan_in = self.num_networks, self.sizes[0]
        if not isinstance(input, Tensor):
            raise TypeError(f"StackedMLP: expected a Tensor, got {type(input).__name__}")
        if input.dim() == 2 and input.shape[1] == fan_in:
            return input.unsqueeze(0).expand(K, *input.shape)
        if input.dim() == 3 and input.shape[0] == K and input.shape[2] == fan_in:
            return input
        raise ValueError(
            f"StackedMLP: expected input of shape (K={K}, N, {fan_in}) or (N, {fan_in}), "
            f"got {tuple(input.shape)}"
        )

    def _normalize(
        self, h: Tensor, name: str, *, affine: bool, running: bool = True
    ) -> Tensor:
        """BN of each network over its own batch: (K, N, C) -> (N, K*C) -> BN -> (K, N, C)."""
        K, N, C = h.shape
        flat = h.transpose(0, 1).reshape(N, K * C)
        training = self.training
        momentum = self.momentum
        counter = getattr(self, f"{name}_num_batches_tracked")
        if training and running:
            counter.add_(1)
            if momentum is None:
                momentum = 1.0 / float(counter)
        out = batch_norm(
            flat,
            getattr(self, f"{name}_running_mean").view(K * C) if running or not training else None,
            getattr(self, f"{name}_running_var").view(K * C) if running or not training else None,
            getattr(self, f"{name}_weight").view(K * C) if affine else None,
            getattr(self, f"{name}_bias").view(K * C) if affine else None,
            training,
            0.0 if momentum is None else momentum,
            self.eps,
            backend=self.backend,
        )
        return out.view(N, K, C).transpose(0, 1)

    def _run(
        self,
        input: Tensor,
        record: bool = False,
        observe: Callable[[int, Tensor], None] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        x = self._check_input(input)
        preactivations: list[Tensor] = []
        normalized: list[Tensor] = []
        for index, (weight, bias) in enumerate(self._linears(), 1):
            h = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)
            if index > self.hidden_layers:
                return h, preactivations, normalized
            if self.batch_norm:
                name = f"linear{index}_bn"
                if observe is not None:  # population statistics: batch statistics only
                    observe(index - 1, h)
                    h = self._normalize(h, name, affine=True, running=False)
                elif record:
                    xhat = self._normalize(h, name, affine=False)
                    gamma = getattr(self, f"{name}_weight").unsqueeze(1)
                    beta = getattr(self, f"{name}_bias").unsqueeze(1)
                    h = torch.addcmul(beta, xhat, gamma)
                    normalized.append(xhat)
                else:
                    h = self._normalize(h, name, affine=True)
            preactivations.append(h)
            x = self.activation(h)
        raise AssertionError("unreachable")

    def forward(self, input: Tensor) -> Tensor:
        """Logits (K, N, classes) of input (K, N, in) or (N, in)."""
        return self._run(input)[0]

    def forward_with_preactivations(self, input: Tensor) -> StackedOutputs:
        """Logits, every hidden nonlinearity's input and (with BN) x-hat; see StackedOutputs.

        With BN, BN runs here without gamma/beta and ``gamma * x_hat + beta`` follows, so
        the values may differ from :meth:`forward`'s in the last bits.
        """
        logits, preactivations, normalized = self._run(input, record=True)
        return StackedOutputs(logits, preactivations, normalized if self.batch_norm else None)

    # --- Algorithm 2, step 3 --------------------------------------------------------------

    @torch.no_grad()
    def recompute_statistics(
        self, batches: Iterable[Any], num_batches: int | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Set every network's BN running statistics to its population statistics.

        Weights frozen, BN normalizing with batch statistics as in training, over the first
        ``num_batches`` of ``batches`` (inputs (K, N, in) or (N, in), or tuples whose first
        element is one). Per network and layer: E = sum_B m mu_B / sum_B m and
        Var = sum_B m var_B / sum_B (m - 1) (for equal m: the mean of the batch means and
        m/(m-1) times the mean of the batch variances), pooled in float64; a batch with a
        non-finite statistic in some unit of a network's layer is left out of that
        network's layer, as :func:`batchnorm.recompute_statistics` does. Counts the
        batches in ``num_batches_tracked`` like it. Returns [(mean, var)] per hidden layer,
        each (K, units).
        """
        if not self.batch_norm:
            raise ValueError("StackedMLP.recompute_statistics: the networks have no BN")
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be at least 1, got {num_batches}")
        K = self.num_networks
        sums = [
            [torch.zeros(K, size, dtype=torch.float64, device=self.output_weight.device)
             for _ in range(2)] + [torch.zeros(K, 1, dtype=torch.float64,
                                               device=self.output_weight.device)
                                   for _ in range(2)]
            for size in self.sizes[1:-1]
        ]

        def observe(layer: int, h: Tensor) -> None:
            count = h.shape[1]
            if count < 2:
                raise ValueError(
                    f"StackedMLP.recompute_statistics: batches of {count} example; need 2 or more"
                )
            var, mean = torch.var_mean(h.double(), dim=1, correction=0)
            finite = (torch.isfinite(mean) & torch.isfinite(var)).all(dim=1, keepdim=True)
            mean_sum, var_sum, samples, dof = sums[layer]
            mean_sum.add_(torch.where(finite, mean * count, 0.0))
            var_sum.add_(torch.where(finite, var * count, 0.0))
            samples.add_(finite.double() * count)
            dof.add_(finite.double() * (count - 1))

        was_training = self.training
        seen = 0
        try:
            self.train()
            for batch in batches:
                if num_batches is not None and seen >= num_batches:
                    break
                if isinstance(batch, (tuple, list)):
                    batch = batch[0]
                self._run(batch, observe=observe)
                seen += 1
        finally:
            self.train(was_training)
        if seen == 0:
            raise ValueError("StackedMLP.recompute_statistics: no batches were given")
        result = []
        for name, (mean_sum, var_sum, samples, dof) in zip(self._bn_names(), sums, strict=True):
            if bool((samples == 0).any()):
                raise ValueError(
                    f"StackedMLP.recompute_statistics: every batch had non-finite statistics "
                    f"at {name} of some network"
                )
            mean, var = mean_sum / samples, var_sum / dof.clamp_min(1.0)
            running_mean = getattr(self, f"{name}_running_mean")
            running_var = getattr(self, f"{name}_running_var")
            running_mean.copy_(mean)
            running_var.copy_(var)
            getattr(self, f"{name}_num_batches_tracked").add_(seen)
            result.append((running_mean.clone(), running_var.clone()))
        return result

    def extra_repr(self) -> str:
        return (f"num_networks={self.num_networks}, sizes={self.sizes}, "
                f"batch_norm={self.batch_norm}")


def _describe(mlp: MLP) -> str:
    kinds = []
    for name, module in mlp.named_children():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            kinds.append(f"{name}:bn(eps={module.eps},momentum={module.momentum},"
                         f"affine={module.affine},stats={module.track_running_stats},"
                         f"estimator={getattr(module, 'estimator', None)},"
                         f"backend={getattr(module, 'backend', 'auto')})")
        elif isinstance(module, nn.Linear):
            bias = module.bias is not None
            kinds.append(f"{name}:linear{tuple(module.weight.shape)},bias={bias}")
        else:
            kinds.append(f"{name}:{type(module).__name__}")
    reference = mlp.output.weight
    return f"[{'; '.join(kinds)}] {reference.dtype} {reference.device}"


class StackedSGD:
    """SGD with one learning rate per network of a :class:`StackedMLP`.

    ``p_k <- p_k - lr_k * d_k`` with ``d = grad``, or with momentum torch's buffer
    (first step ``buf = grad``, then ``buf = momentum * buf + grad``; dampening 0, no
    Nesterov, no weight decay): the update of ``torch.optim.SGD(lr=lr_k,
    momentum=momentum)`` on network k alone, in a few foreach kernels for all networks.
    """

    def __init__(self, model: StackedMLP, lrs: Tensor | Sequence[float],
                 momentum: float = 0.0) -> None:
        lrs = torch.as_tensor(lrs, dtype=torch.float64).detach().clone()
        K = model.num_networks
        if lrs.shape != (K,):
            raise ValueError(
                f"StackedSGD: lrs must have shape ({K},), one per network, got {tuple(lrs.shape)}"
            )
        if not bool(torch.isfinite(lrs).all()) or bool((lrs < 0).any()):
            raise ValueError(f"StackedSGD: learning rates must be finite and >= 0, got {lrs}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"StackedSGD: momentum must be in [0, 1), got {momentum}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        for param in self.params:
            if param.shape[0] != K:
                raise ValueError(f"StackedSGD: parameter of shape {tuple(param.shape)} is not "
                                 f"stacked over {K} networks")
        self.momentum = float(momentum)
        self.buffers: list[Tensor] | None = None
        self._set_lrs(lrs)

    def _set_lrs(self, lrs: Tensor) -> None:
        self.lrs = lrs
        # -lr_k broadcast against each parameter: (K, 1) or (K, 1, 1).
        self._negative = [
            (-lrs).to(param.dtype).to(param.device).view(-1, *[1] * (param.dim() - 1))
            for param in self.params
        ]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [param.grad for param in self.params]
        if any(grad is None for grad in grads):
            raise RuntimeError("StackedSGD.step: a parameter has no gradient; call backward first")
        if self.momentum:
            if self.buffers is None:  # torch's first step: the buffer is the gradient
                self.buffers = torch._foreach_mul(grads, 1.0)
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_addcmul_(self.params, grads, self._negative)  # p + d * (-lr), one pass

    def state_dict(self) -> dict[str, Any]:
        return {"lrs": self.lrs.clone(), "momentum": self.momentum,
                "buffers": None if self.buffers is None else [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore learning rates, momentum and momentum buffers (torch's convention)."""
        lrs = torch.as_tensor(state["lrs"], dtype=torch.float64)
        if lrs.shape != self.lrs.shape:
            raise ValueError(
                f"StackedSGD.load_state_dict: the state has {tuple(lrs.shape)} learning rates, "
                f"this optimizer {tuple(self.lrs.shape)}"
            )
        buffers = state["buffers"]
        if buffers is not None and [b.shape for b in buffers] != [p.shape for p in self.params]:
            raise ValueError("StackedSGD.load_state_dict: momentum buffers do not match the model")
        self.momentum = float(state["momentum"])
        self._set_lrs(lrs.clone())
        self.buffers = None if buffers is None else [
            b.to(device=p.device, dtype=p.dtype).clone()
            for b, p in zip(buffers, self.params, strict=True)
        ]
