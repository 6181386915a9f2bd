"""ConvNorm1d/2d/3d modules: options, state, caching and everyday PyTorch use."""
import copy
import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reference as R
from convnorm import ConvNorm1d, ConvNorm2d, ConvNorm3d
from convnorm import functional as CF
from strategies import conv_configs, fourier_applies

CLASSES = {1: ConvNorm1d, 2: ConvNorm2d, 3: ConvNorm3d}
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def build_module(cfg, **kwargs):
    return CLASSES[cfg["dims"]](
        cfg["in_channels"], cfg["out_channels"], cfg["kernel"], cfg["stride"], cfg["padding"],
        cfg["dilation"], cfg["groups"], padding_mode=cfg["padding_mode"], dtype=torch.float64, **kwargs,
    )


@settings(max_examples=120, deadline=None)
@given(cfg=conv_configs(), bias=st.booleans(), affine_init=st.sampled_from(["identity", "random"]),
       algorithm=st.sampled_from(["auto", "spatial", "fourier"]), train=st.booleans())
def test_module_matches_dense_reference(cfg, bias, affine_init, algorithm, train):
    if algorithm == "fourier" and not fourier_applies(cfg):
        algorithm = "auto"
    torch.manual_seed(0)
    m = build_module(cfg, bias=bias, affine_init=affine_init, algorithm=algorithm).train(train)
    x = torch.randn((cfg["batch"], cfg["in_channels"], *cfg["size"]), dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
    dense = R.build(m.weight.numpy(force=True), cfg["size"], cfg["stride"], cfg["padding"], cfg["dilation"],
                    cfg["groups"], cfg["padding_mode"], m.eps, m.affine_weight.numpy(force=True))
    expected = R.apply(dense, x.numpy(), cfg["padding_mode"], None if m.bias is None else m.bias.numpy(force=True),
                       m.affine_bias.numpy(force=True))
    assert np.abs(y.numpy() - expected).max() < 1e-10 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("cls,kernel,size", [(ConvNorm1d, 3, (11,)), (ConvNorm2d, (2, 3), (7, 6)), (ConvNorm3d, 3, (4, 5, 4))])
def test_new_layer_computes_the_pure_normalization(cls, kernel, size):
    torch.manual_seed(0)
    with_affine = cls(3, 4, kernel, padding=1)
    without = cls(3, 4, kernel, padding=1, affine=False)
    without.weight = with_affine.weight
    x = torch.randn(2, 3, *size)
    assert torch.equal(with_affine.affine_weight.sum(dim=tuple(range(1, with_affine.affine_weight.dim()))), torch.ones(4))
    assert torch.allclose(with_affine(x), without(x), atol=1e-6)
    # ... and the pure normalization is conv_norm without anything else.
    assert torch.allclose(without(x), CF.conv_norm(x, without.weight, padding=1), atol=0)


def test_bias_is_added_after_normalization():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, bias=True, affine=False, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    nobias = CF.conv_norm(x, m.weight, padding=1)
    assert torch.allclose(m(x) - nobias, m.bias.view(1, 4, 1, 1).expand_as(nobias), atol=1e-12)


def test_default_options_and_parameters():
    m = ConvNorm2d(8, 16, 3)
    assert m.bias is None and m.affine and m.eps == 1e-5 and not m.preconditioner_grad
    assert isinstance(m, nn.Conv2d)
    names = dict(m.named_parameters())
    assert set(names) == {"weight", "affine_weight", "affine_bias"}
    assert names["affine_weight"].shape == (16, 1, 3, 3)
    assert "affine=True" in repr(m) and "eps=1e-05" in repr(m)
    assert set(dict(ConvNorm2d(8, 16, 3, affine=False, bias=True).named_parameters())) == {"weight", "bias"}


def test_random_affine_init_reproduces_pytorch_conv_init():
    torch.manual_seed(0)
    m = ConvNorm2d(4, 6, 3, affine_init="random")
    torch.manual_seed(0)
    reference_conv = nn.Conv2d(4, 6, 3, bias=False)
    ref_affine = nn.Conv2d(6, 6, 3, groups=6, bias=True)
    assert torch.equal(m.weight, reference_conv.weight)
    assert torch.equal(m.affine_weight, ref_affine.weight)
    assert torch.equal(m.affine_bias, ref_affine.bias)


def test_reset_parameters_restores_identity_affine():
    m = ConvNorm2d(4, 6, 3)
    with torch.no_grad():
        m.affine_weight.normal_()
    m.reset_parameters()
    fresh = ConvNorm2d(4, 6, 3)
    assert torch.equal(m.affine_weight, fresh.affine_weight)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"padding_mode": "mirror"}, ValueError, "padding_mode"),
    ({"affine_init": "zeros"}, ValueError, "affine_init"),
    ({"eps": -1.0}, ValueError, "eps"),
    ({"momentum": 2.0, "track_running_spectrum": True}, ValueError, "momentum"),
    ({"algorithm": "fft"}, ValueError, "algorithm"),
])
def test_bad_constructor_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConvNorm2d(3, 4, 3, **kwargs)


@pytest.mark.parametrize("shape,match", [
    ((2, 3, 8, 8, 8), "expected a 3D .unbatched. or 4D .batched. input for a 2D ConvNorm, got a 5D"),
    ((8,), "expected a 3D"),
    ((2, 5, 8, 8), "expected input with 3 channels"),
    ((2, 3, 2, 8), "smaller than the dilated kernel"),
])
def test_bad_input_raises_named_error(shape, match):
    with pytest.raises(ValueError, match=match):
        ConvNorm2d(3, 4, 3)(torch.randn(shape))


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="input must be a Tensor"):
        ConvNorm1d(1, 1, 3)(np.zeros((1, 1, 5)))


def test_unbatched_input():
    m = ConvNorm2d(3, 4, 3, padding=1)
    x = torch.randn(3, 7, 7)
    assert torch.allclose(m(x), m(x[None])[0])


# -- v̂ depends on the weights only -----------------------------------------------------
def test_train_at_one_size_eval_at_another_uses_current_weights():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, dtype=torch.float64)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 3, 8, 8, dtype=torch.float64)).square().mean().backward()
        opt.step()
    m.eval()
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
    dense = R.build(m.weight.numpy(force=True), (13, 11), 1, 1, 1, 1, "zeros", m.eps, m.affine_weight.numpy(force=True))
    expected = R.apply(dense, x.numpy(), "zeros", None, m.affine_bias.numpy(force=True))
    assert np.abs(y.numpy() - expected).max() < 1e-10


def test_eval_spectrum_is_cached_until_the_weights_change():
    torch.manual_seed(0)
    # Pinned: 'auto' would also compute spectra while timing the paths on a new shape.
    m = ConvNorm2d(3, 4, 3, padding=1, algorithm="spatial").eval()
    x = torch.randn(2, 3, 8, 8)
    calls = []
    original = CF.spectrum_for_plan

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    CF.spectrum_for_plan = counting
    try:
        with torch.no_grad():
            y1 = m(x)
            m(x)
            assert len(calls) == 1
            m(torch.randn(1, 3, 10, 10))  # another size: another grid
            assert len(calls) == 2
            m(x)
            assert len(calls) == 2  # both grids cached
            m.weight.mul_(2.0)  # an in-place change bumps the version counter
            y2 = m(x)
            assert len(calls) == 3
        # Doubling the weight leaves the normalized output unchanged (scale invariance,
        # up to eps): the cache did not serve a stale spectrum.
        assert torch.allclose(y1, y2, atol=1e-4)
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        sd["weight"] = torch.randn_like(sd["weight"])
        m.load_state_dict(sd)
        with torch.no_grad():
            y3 = m(x)
        assert len(calls) == 4
        assert torch.allclose(y3, CF.conv_norm(x, sd["weight"], padding=1), atol=1e-6)
    finally:
        CF.spectrum_for_plan = original


def test_optimizer_step_invalidates_the_cache():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, affine=False)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    x = torch.randn(2, 3, 8, 8)
    m(x).sum().backward()
    opt.step()
    assert torch.allclose(m(x), CF.conv_norm(x, m.weight, padding=1), atol=1e-6)


def test_gradient_option_changes_weight_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    grads = {}
    for flag in (False, True):
        m = ConvNorm2d(3, 4, 3, padding=1, preconditioner_grad=flag, dtype=torch.float64)
        torch.manual_seed(1)
        m.reset_parameters()
        m(x).square().sum().backward()
        grads[flag] = m.weight.grad
    assert not torch.allclose(grads[False], grads[True])
    # With the gradient through v̂ the loss is scale-invariant in the weight (eps aside):
    # the gradient is orthogonal to the weight.
    m = ConvNorm2d(3, 4, 3, padding=1, preconditioner_grad=True, eps=0.0, dtype=torch.float64)
    m(x).square().sum().backward()
    per_row = (m.weight.grad * m.weight).flatten(1).sum(1)
    assert per_row.abs().max() < 1e-8 * m.weight.grad.abs().max()


# -- running average of v̂ ----------------------------------------------------------------
def _train(m, steps, size=(8, 8)):
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        m(torch.randn(4, m.in_channels, *size, dtype=m.weight.dtype)).square().mean().backward()
        opt.step()


def test_running_spectrum_follows_the_paper_schedule():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True, dtype=torch.float64)
    grid = CF.spectrum_grid_size((8, 8), 3, padding=1)
    plan = CF._plan((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), "zeros")
    expected = None
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for step in range(1, 5):
        current = CF.spectrum_for_plan(m.weight, plan, (1, 1), m.eps, False)
        factor = max(0.5 * (np.cos(np.pi * step / 40000) + 1), 0.01)
        expected = current if expected is None else factor * current + (1 - factor) * expected
        opt.zero_grad()
        m(torch.randn(4, 3, 8, 8, dtype=torch.float64)).square().mean().backward()
        opt.step()
    assert m.num_batches_tracked.item() == 4
    assert tuple(m.running_grid.tolist()) == grid
    assert torch.allclose(m.running_spectrum, expected, atol=1e-12)


@pytest.mark.parametrize("step", [1, 2, 10_000, 20_000, 37_449, 37_450, 39_999, 40_000, 40_001, 100_000])
def test_running_average_factor_over_the_whole_ramp(step):
    """The closed form, written out: the cosine ramp from 1 at step 0 to 0 at 40,000, floored at 0.01."""
    ramp = (1 + math.cos(math.pi * min(step, 40_000) / 40_000)) / 2
    assert CF.running_average_factor(step) == pytest.approx(max(ramp, 0.01), rel=1e-15, abs=0)
    # The floor is reached once the ramp crosses 0.01: cos(π s / L) = -0.98 at s ≈ 37,449.4.
    assert (CF.running_average_factor(step) == 0.01) == (step >= 37_450)


def test_running_spectrum_update_uses_the_floor_past_the_ramp():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True, dtype=torch.float64)
    plan = CF._plan((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), "zeros")
    _train(m, 1)
    m.num_batches_tracked.fill_(39_998)
    expected = m.running_spectrum.clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for step in (39_999, 40_000, 40_001, 40_002):
        current = CF.spectrum_for_plan(m.weight, plan, (1, 1), m.eps, False)
        factor = max((1 + math.cos(math.pi * min(step, 40_000) / 40_000)) / 2, 0.01)
        expected = factor * current + (1 - factor) * expected
        opt.zero_grad()
        m(torch.randn(4, 3, 8, 8, dtype=torch.float64)).square().mean().backward()
        opt.step()
    assert m.num_batches_tracked.item() == 40_002
    torch.testing.assert_close(m.running_spectrum, expected, rtol=1e-13, atol=0)
    # The floor keeps 99% of the old average: it lags the weights that moved.
    assert not torch.allclose(m.running_spectrum, CF.spectrum_for_plan(m.weight, plan, (1, 1), m.eps, False),
                              rtol=1e-3)


def test_fixed_momentum():
    m = ConvNorm1d(2, 2, 3, track_running_spectrum=True, momentum=0.0, dtype=torch.float64)
    _train(m, 1, (9,))
    first = m.running_spectrum.clone()
    _train(m, 3, (9,))
    assert torch.equal(first, m.running_spectrum)  # momentum 0 never moves after the start


def test_running_spectrum_state_dict_round_trip_and_eval():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True, dtype=torch.float64)
    _train(m, 5)
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    fresh = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True, dtype=torch.float64)
    fresh.load_state_dict(torch.load(buffer), strict=True)
    assert fresh.num_batches_tracked.item() == 5
    assert torch.equal(fresh.running_spectrum, m.running_spectrum)
    m.eval(), fresh.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = fresh(x)
        assert torch.equal(y, m(x))
    # Eval on the training grid uses the running average, not the current weights.
    plan = CF._plan((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), "zeros")
    from_running = CF._conv_norm_planned(x, m.weight, None, plan, "zeros", (1, 1), 1, m.eps, m.running_spectrum,
                                         False, m.affine_weight, m.affine_bias)
    assert torch.allclose(y, from_running, atol=1e-12)
    assert not torch.allclose(y, CF.conv_norm(x, m.weight, padding=1, affine_weight=m.affine_weight,
                                              affine_bias=m.affine_bias), atol=1e-6)
    # Training continues counting from the loaded counter.
    fresh.train()
    _train(fresh, 1)
    assert fresh.num_batches_tracked.item() == 6


def test_running_spectrum_at_another_eval_size_warns_and_uses_weights():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True, dtype=torch.float64)
    _train(m, 2)
    m.eval()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with pytest.warns(UserWarning, match="running spectrum was tracked on the grid"):
        with torch.no_grad():
            y = m(x)
    expected = CF.conv_norm(x, m.weight, padding=1, affine_weight=m.affine_weight, affine_bias=m.affine_bias)
    assert torch.allclose(y, expected, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            m(x)  # warns once only


def test_running_spectrum_restarts_when_training_size_changes():
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True)
    _train(m, 2, (8, 8))
    with pytest.warns(UserWarning, match="restarts on the new grid"):
        _train(m, 1, (10, 10))
    assert m.num_batches_tracked.item() == 1
    assert tuple(m.running_grid.tolist()) == (12, 12)


def test_running_spectrum_of_1x1_kernels():
    m = ConvNorm2d(3, 4, 1, stride=2, track_running_spectrum=True, dtype=torch.float64)
    _train(m, 2)
    m.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any input size shares the 1x1 "grid"
        with torch.no_grad():
            m(x), m(torch.randn(1, 3, 5, 7, dtype=torch.float64))


def test_state_dict_without_tracking_has_no_buffers():
    sd = ConvNorm2d(3, 4, 3).state_dict()
    assert set(sd) == {"weight", "affine_weight", "affine_bias"}


# -- everyday PyTorch use ----------------------------------------------------------------
def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


# Each path pinned: under 'auto' the path depends on a timing, and the two round differently.
@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_transforms_in_float32_and_returns_input_dtype(dtype, algorithm):
    torch.manual_seed(0)
    m = ConvNorm2d(8, 8, 3, padding=1, affine_init="random", algorithm=algorithm)
    x = torch.randn(2, 8, 16, 16)
    reference = m(x)
    with torch.autocast("cpu", dtype=dtype):
        if not _cpu_autocast_enabled():
            pytest.skip(f"this torch has no CPU autocast to {dtype}")
        y = m(x)
    assert y.dtype == torch.float32
    # Against float32: autocast rounds at most two results to the format (the spatial path's
    # conv output and the depthwise affine conv's output), each by at most the unit roundoff u.
    u = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
    assert (y - reference).abs().max() < 3 * u * reference.abs().max()
    # Against the exact low-precision pipeline, the preconditioner in float64. The spatial path
    # runs the conv in the format (autocast's conv) and its FFTs in float32; the Fourier path
    # runs the conv and the preconditioner as one float32 product with DFT matrices. Both run
    # the affine conv and its bias in the format. Only float32 arithmetic separates y from the
    # model, so at most a rare element lands one ulp apart after the affine conv's rounding;
    # transforms run in the format would put an error of order u on every element (RMS near u / 3).
    with torch.no_grad():
        conv_dtype = dtype if algorithm == "spatial" else torch.float64  # the Fourier path: float32, modelled exact
        c = F.conv2d(x.to(conv_dtype), m.weight.to(conv_dtype), None, 1, 2).double()  # the full 18x18 grid
        v = CF.preconditioner_spectrum(m.weight.double(), (18, 18), eps=m.eps)
        p = torch.fft.ifft2(torch.fft.fft2(c) * v).real[..., 1:-1, 1:-1]
        affine = F.conv2d(p.to(dtype), m.affine_weight.to(dtype), None, 1, 1, 1, 8)
        expected = (affine + m.affine_bias.to(dtype)[:, None, None]).float()  # the bias joins in the format
    rms = lambda t: t.double().square().mean().sqrt()
    assert rms(y - expected) < u / 10 * rms(expected)
    with torch.autocast("cpu", dtype=dtype):
        y_low = m.to(dtype)(x.to(dtype))
    assert y_low.dtype == dtype


@pytest.mark.parametrize("kernel", [3, 1])
def test_channels_last(kernel):
    torch.manual_seed(0)
    m = ConvNorm2d(4, 6, kernel, padding=1, stride=2)
    x = torch.randn(2, 4, 9, 9)
    xl = x.contiguous(memory_format=torch.channels_last)
    y, yl = m(x), m(xl)
    assert yl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, yl, atol=1e-5)
    yl.sum().backward()


def test_deepcopy_and_pickle():
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1, track_running_spectrum=True)
    _train(m, 2)
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = m(x)  # fills the cache
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert len(clone._spectrum_cache) == 0
        with torch.no_grad():
            assert torch.equal(clone(x), y)
        assert clone.num_batches_tracked.item() == 2


@pytest.mark.parametrize("convert", ["double", "half_then_float", "to_cpu", "float"])
def test_to_dtype_clears_cache_and_keeps_working(convert):
    torch.manual_seed(0)
    m = ConvNorm2d(3, 4, 3, padding=1).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        m(x)
    assert m._spectrum_cache  # v̂ of this input size is cached
    # Module._apply may hand the parameter new values at a recycled address with a fresh version
    # counter (float -> half -> float rounds the weights): a cache surviving it could be stale.
    {"double": lambda: m.double(), "half_then_float": lambda: m.half().float(),
     "to_cpu": lambda: m.to("cpu"), "float": lambda: m.float()}[convert]()
    assert not m._spectrum_cache
    dtype = torch.float64 if convert == "double" else torch.float32
    fresh = ConvNorm2d(3, 4, 3, padding=1, dtype=dtype).eval()
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        y, expected = m(x.to(dtype)), fresh(x.to(dtype))
    assert y.dtype == dtype and torch.equal(y, expected)


COMPILE_SCRIPT = """
import torch
from torch import nn
from convnorm import ConvNorm2d
for algorithm in ("spatial", "fourier"):
    torch.manual_seed(0)
    m = nn.Sequential(ConvNorm2d(3, 8, 3, padding=1, algorithm=algorithm), nn.ReLU(), ConvNorm2d(8, 8, 1, stride=2),
                      ConvNorm2d(8, 4, 3, stride=2, padding=1, padding_mode="circular", algorithm=algorithm))
    x = torch.randn(2, 3, 8, 8)
    expected = m(x)
    y = torch.compile(m)(x)
    assert torch.allclose(y, expected, atol=1e-5), (algorithm, (y - expected).abs().max())
    y.sum().backward()
    assert m[0].weight.grad is not None and m[3].weight.grad is not None
print("compiled ok")
"""


@pytest.mark.slow
def test_torch_compile_smoke():
    """Default (inductor) backend, forward and backward. Run in a subprocess: a crash in
    generated code must fail this test, not the whole session."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
def test_eval_cache_serves_both_algorithms(algorithm):
    torch.manual_seed(0)
    m = ConvNorm2d(4, 6, 3, stride=2, padding=1, algorithm=algorithm, dtype=torch.float64)
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    train_out = m(x)
    m.eval()
    with torch.no_grad():
        first, second = m(x), m(x)
        m.weight.mul_(-1.5)
        changed = m(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, train_out, atol=1e-12)
    expected = CF.conv_norm(x, m.weight, stride=2, padding=1, affine_weight=m.affine_weight, affine_bias=m.affine_bias)
    assert torch.allclose(changed, expected, atol=1e-12)
