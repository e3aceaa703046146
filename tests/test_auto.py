"""The rule behind ``backend="auto"`` (backends/auto.py), case by case, on tensor metadata.

Fast and exact: the tensors are allocated, never computed on, and whether a generated
backend can be built here is replaced by a switch (``usable``), so every branch of the
rule is pinned down on any machine. What the chosen backends compute is tested elsewhere
(test_kernels.py, test_properties.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from batchnorm.backends import auto

BIG = (2, 4, 256, 256)  # 2^19 elements: exactly MIN_NUMEL


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch):
    """Every test starts with no shape class seen, and every backend usable."""
    auto.reset()
    monkeypatch.setattr(auto, "_usable", lambda name, input: True)
    yield
    auto.reset()


def big(dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    x = torch.empty(BIG, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def third(x: torch.Tensor, training: bool = True, activation: str = "identity") -> list[str]:
    return [auto.choose(x, training, activation) for _ in range(auto.SIGHTINGS)]


def test_constants_are_the_documented_ones() -> None:
    assert auto.MIN_NUMEL == 1 << 19 == torch.Size(BIG).numel()
    assert auto.SIGHTINGS == 3


@pytest.mark.parametrize(("shape", "layout"), [((8, 3), "nc"), ((8, 3, 5), "nchw"),
                                               ((8, 3, 5, 5), "nchw"), ((2, 3, 4, 5, 6), "nchw")])
def test_layout_of_contiguous(shape: tuple[int, ...], layout: str) -> None:
    assert auto.layout_of(torch.empty(shape)) == layout


def test_layout_of_strided_inputs() -> None:
    assert auto.layout_of(torch.empty(3, 8).t()) == "other"
    assert auto.layout_of(torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last)) == "nhwc"
    assert auto.layout_of(torch.empty(2, 3, 4, 5).transpose(2, 3)) == "other"
    assert auto.layout_of(torch.empty(2, 2, 4, 5).to(memory_format=torch.channels_last)) == "nhwc"
    one_channel = torch.empty(200).as_strided((2, 1, 4, 5), (1, 1, 2, 8))
    assert not one_channel.is_contiguous() and one_channel.stride(1) == 1
    assert auto.layout_of(one_channel) == "other"  # stride 1 but one channel: not nhwc


def test_small_inputs_run_native() -> None:
    x = torch.empty(2, 4, 256, 255)  # one row short of MIN_NUMEL
    assert third(x) == ["native"] * 3


def test_nchw_training_waits_for_the_third_sighting_then_runs_hybrid() -> None:
    assert third(big()) == ["native", "native", "hybrid"]
    assert auto.choose(big(), True) == "hybrid"  # and stays


def test_a_fused_activation_turns_hybrid_into_compiled() -> None:
    assert third(big(), activation="relu") == ["native", "native", "compiled"]


def test_channels_last_training_runs_compiled() -> None:
    x = big(channels_last=True)
    assert third(x) == ["native", "native", "compiled"]
    assert third(x, activation="relu")[-1] == "compiled"


@pytest.mark.parametrize("case", ["eval", "float64", "nc", "other"])
def test_unlisted_cases_run_native(case: str) -> None:
    x = {"eval": big(), "float64": big(torch.float64),
         "nc": torch.empty(1 << 13, 64), "other": big().transpose(2, 3)}[case]
    assert third(x, training=case != "eval") == ["native"] * 3


def test_training_on_half_precision_cpu_input_runs_reference() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        assert auto.choose(torch.empty(4, 3, dtype=dtype), True) == "reference"
        assert auto.choose(big(dtype), True) == "reference"
        assert auto.choose(torch.empty(4, 3, dtype=dtype), False) == "native"


def test_shape_classes_are_counted_separately() -> None:
    x = big()
    auto.choose(x, True)
    auto.choose(x, True)
    assert auto.choose(big(channels_last=True), True) == "native"  # another stride
    assert auto.choose(x, False) == "native"  # another mode (and eval is unlisted)
    assert auto.choose(x, True) == "hybrid"


def test_reset_forgets() -> None:
    third(big())
    auto.reset()
    assert auto.choose(big(), True) == "native"


def test_the_table_is_cleared_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto, "_MAX_TRACKED", 3)
    for n in range(3):
        auto.choose(torch.empty(2, 4, 256, 256 + n), True)
    assert len(auto._seen) == 3
    auto.choose(torch.empty(2, 4, 256, 300), True)
    assert len(auto._seen) == 1


def test_inside_torch_compile_runs_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert third(big()) == ["native"] * 3


def test_an_unusable_backend_falls_back_to_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto, "_usable", lambda name, input: name != "hybrid")
    assert third(big())[-1] == "native"
    assert third(big(channels_last=True))[-1] == "compiled"


@pytest.mark.parametrize(("available", "failures", "usable"),
                         [(True, 0, True), (False, 0, False), (True, 1, False)])
def test_usable_asks_the_registry(monkeypatch: pytest.MonkeyPatch, available: bool,
                                  failures: int, usable: bool) -> None:
    monkeypatch.undo()  # the real _usable
    x = big()
    fake = SimpleNamespace(is_available=lambda input: available and input is x,
                           failures=lambda: failures)

    def get(name: str) -> SimpleNamespace:
        if name != "hybrid":
            raise ValueError(name)
        return fake

    monkeypatch.setattr(auto.registry, "get", get)
    assert auto._usable("hybrid", x) is usable
    assert auto._usable("compiled", x) is False
    assert auto._usable("hybrid", big()) is False  # asked about this very input
    assert third(x)[-1] == ("hybrid" if usable else "native")  # choose asks about x too


def test_usable_is_false_for_an_unknown_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    assert auto._usable("no-such-backend", big()) is False


def test_training_and_eval_are_separate_shape_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a rule for evaluation too, sightings in one mode do not count for the other."""
    rules = (*auto.RULES, auto.Rule("cpu", (torch.float32,), "nchw", False, "compiled"))
    monkeypatch.setattr(auto, "RULES", rules)
    x = big()
    assert third(x, training=True)[-1] == "hybrid"
    assert auto.choose(x, False) == "native"
    assert third(x, training=False)[-1] == "compiled"
