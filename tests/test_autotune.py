"""algorithm='auto': measured once per configuration, cached, deterministic when asked."""
from __future__ import annotations

import pytest
import torch

from convnorm import ConvNorm2d, autotune, dft
from convnorm import functional as CF


@pytest.fixture(autouse=True)
def fresh_choices():
    autotune.clear_cache()
    yield
    autotune.clear_cache()
    autotune.set_enabled(True)


def _fake_timer(monkeypatch, fast: str):
    """Make one path look faster; returns the list of paths timed."""
    timed = []

    def fake(run, device):
        run()
        timed.append(run)
        return 1.0 if getattr(run, "path", None) == fast else 2.0

    monkeypatch.setattr(autotune, "_time_once", fake)
    original = autotune.choose

    def tagging(key, names, candidates, device):
        def tagged():
            made = candidates()
            for name, run in made.items():
                run.path = name
            return made
        return original(key, names, tagged, device)

    monkeypatch.setattr(autotune, "choose", tagging)
    return timed


def _fourier_calls(monkeypatch):
    calls = []
    original = dft.fourier_conv_norm

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(CF, "fourier_conv_norm", counting)
    return calls


@pytest.mark.parametrize("fast", ["spatial", "fourier"])
@pytest.mark.parametrize("train", [True, False])
def test_auto_uses_the_path_measured_faster_and_times_once(monkeypatch, fast, train):
    timed = _fake_timer(monkeypatch, fast)
    m = ConvNorm2d(4, 6, 3, stride=2, padding=1).train(train)
    x = torch.randn(2, 4, 9, 9, requires_grad=train)
    with torch.set_grad_enabled(train):
        m(x)
    assert len(autotune.choices()) == 1 and list(autotune.choices().values()) == [fast]
    assert len(timed) == 2 * autotune._REPEATS
    calls = _fourier_calls(monkeypatch)
    with torch.set_grad_enabled(train):
        m(x)
    assert len(timed) == 2 * autotune._REPEATS  # the choice is reused, not re-timed
    assert len(calls) == (1 if fast == "fourier" else 0)


def test_timing_leaves_no_gradient_on_the_model():
    m = ConvNorm2d(3, 4, 3, padding=1)
    m(torch.randn(2, 3, 8, 8))
    assert m.weight.grad is None and m.affine_weight.grad is None
    assert len(autotune.choices()) == 1


def test_a_new_input_shape_or_mode_is_a_new_choice():
    m = ConvNorm2d(3, 4, 3, padding=1)
    m(torch.randn(2, 3, 8, 8))
    m(torch.randn(2, 3, 10, 10))
    with torch.no_grad():
        m(torch.randn(2, 3, 8, 8))
    assert len(autotune.choices()) == 3


@pytest.mark.parametrize("switch", ["deterministic", "disabled"])
def test_no_timing_when_deterministic_or_disabled(monkeypatch, switch):
    timed = _fake_timer(monkeypatch, "fourier")
    calls = _fourier_calls(monkeypatch)
    m = ConvNorm2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    if switch == "disabled":
        autotune.set_enabled(False)
        m(x)
    else:
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            m(x)
        finally:
            torch.use_deterministic_algorithms(previous)
    assert timed == [] and autotune.choices() == {} and calls == []  # DEFAULT is 'spatial'
    assert autotune.DEFAULT == "spatial"


def test_pinned_layers_and_single_tap_kernels_are_never_timed(monkeypatch):
    timed = _fake_timer(monkeypatch, "fourier")
    ConvNorm2d(3, 4, 3, padding=1, algorithm="spatial")(torch.randn(1, 3, 6, 6))
    ConvNorm2d(3, 4, 1)(torch.randn(1, 3, 6, 6))
    ConvNorm2d(3, 4, (1, 3), padding=(0, 1))(torch.randn(1, 3, 6, 6))  # no Fourier path
    assert timed == [] and autotune.choices() == {}


def test_auto_output_is_the_operator_either_way(monkeypatch):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    outputs = []
    for fast in ("spatial", "fourier"):
        autotune.clear_cache()
        _fake_timer(monkeypatch, fast)
        m = ConvNorm2d(3, 5, 3, stride=2, padding=1, dtype=torch.float64)
        torch.nn.init.normal_(m.weight, generator=torch.Generator().manual_seed(1))
        outputs.append(m(x))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-12
