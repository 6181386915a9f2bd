"""convnorm.spectral against dense operators built from impulse responses (float64)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reference as R
from convnorm import ConvNorm1d, ConvNorm2d, convert_convnorm
from convnorm import spectral
from strategies import conv_configs

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def dense_operator(layer, in_shape):
    """The explicit matrix of a layer's linear part from impulse responses: (out, in)."""
    n_in = int(np.prod(in_shape))
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape[1:])
    with torch.no_grad():
        zero = layer(torch.zeros((1, *in_shape[1:]), dtype=torch.float64))
        cols = layer(basis) - zero
    return cols.reshape(n_in, -1).T


def make_conv(cfg, convnorm=False, **kwargs):
    cls = {1: ConvNorm1d, 2: ConvNorm2d}[cfg["dims"]] if convnorm else CONVS[cfg["dims"]]
    torch.manual_seed(0)
    return cls(cfg["in_channels"], cfg["out_channels"], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"],
               cfg["groups"], padding_mode=cfg["padding_mode"], dtype=torch.float64, **kwargs).eval()


@settings(max_examples=60, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2]), modes=st.just("circular")), grid_extra=st.integers(0, 3))
def test_circular_singular_values_equal_dense_svd(cfg, grid_extra):
    torch.manual_seed(1)
    w = torch.randn(cfg["out_channels"], cfg["in_channels"] // cfg["groups"], *cfg["kernel"], dtype=torch.float64)
    grid = tuple(s + grid_extra for s in cfg["size"])
    got = spectral.circular_conv_singular_values(w, grid, dilation=cfg["dilation"], groups=cfg["groups"])
    # Dense circular correlation on the grid: circular padding, output size = grid.
    dense = R.build(w.numpy(), grid, 1, "same", cfg["dilation"], cfg["groups"], "circular", normalize=False)
    blocks = np.concatenate([np.concatenate(list(dense.A[i]), axis=1) for i in range(dense.A.shape[0])], axis=0)
    expected = np.linalg.svd(blocks, compute_uv=False)
    expected = np.sort(expected)[::-1][: got.numel()]
    assert got.shape[0] == min(blocks.shape)
    assert np.abs(got.numpy() - expected).max() < 1e-10 * max(1.0, expected.max())


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2])), convnorm=st.booleans())
def test_power_iteration_matches_dense_largest_singular_value(cfg, convnorm):
    layer = make_conv(cfg, convnorm=convnorm, **({"affine_init": "random"} if convnorm else {}))
    shape = (1, cfg["in_channels"], *cfg["size"])
    expected = np.linalg.svd(dense_operator(layer, shape).numpy(), compute_uv=False)[0]
    result = spectral.operator_norm(layer, shape, tol=1e-10, max_iter=5000)
    # Power iteration converges from below; a near-tie of the top singular values slows it,
    # so the stated tolerance is on the result, not on the iteration's stopping rule.
    assert result.value <= expected * (1 + 1e-9)
    assert abs(result.value - expected) <= 1e-4 * expected
    assert float(result) == result.value


def test_operator_norm_removes_bias_and_reports_convergence():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).double()
    with torch.no_grad():
        conv.bias.fill_(100.0)
    shape = (1, 3, 6, 6)
    expected = np.linalg.svd(dense_operator(conv, shape).numpy(), compute_uv=False)[0]
    loose = spectral.operator_norm(conv, shape, tol=1e-2, max_iter=1000)
    tight = spectral.operator_norm(conv, shape, tol=1e-12, max_iter=3)
    assert loose.converged and loose.iterations < 1000
    assert not tight.converged and tight.iterations == 3
    assert abs(spectral.operator_norm(conv, shape, tol=1e-10, max_iter=5000).value - expected) < 1e-4 * expected


def test_spectral_norm_parametrization_does_not_normalize_the_conv_operator():
    """PyTorch's spectral_norm fixes the reshaped weight matrix's norm at 1, not the conv's."""
    torch.manual_seed(0)
    conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(8, 8, 3, padding=1).double(), n_power_iterations=50)
    conv.train()
    for _ in range(5):
        conv(torch.randn(1, 8, 8, 8, dtype=torch.float64))
    conv.eval()
    matrix_norm = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert abs(float(matrix_norm) - 1) < 1e-6
    assert spectral.operator_norm(conv, (1, 8, 8, 8), tol=1e-8).value > 1.2


@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2]), modes=st.sampled_from(["zeros", "circular"])))
def test_isometry_gap_matches_dense_gram(cfg):
    layer = make_conv(cfg)
    shape = (1, cfg["in_channels"], *cfg["size"])
    dense = dense_operator(layer, shape).numpy()
    out_per_channel = dense.shape[0] // cfg["out_channels"]
    expected = []
    for i in range(cfg["out_channels"]):
        q = dense[i * out_per_channel : (i + 1) * out_per_channel]
        expected.append(np.abs(np.linalg.eigvalsh(q @ q.T - np.eye(q.shape[0]))).max())
    gap = spectral.channel_isometry_gap(layer, shape, tol=1e-10, max_iter=5000)
    assert np.allclose(gap.per_channel.numpy(), expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kernel,size", [(3, (9, 9)), ((2, 3), (8, 7)), (5, (6, 6))])
def test_isometry_gap_of_circular_convnorm_is_zero_and_of_plain_conv_is_positive(kernel, size):
    torch.manual_seed(0)
    cn = ConvNorm2d(4, 6, kernel, padding="same", padding_mode="circular", eps=1e-12, affine=False).double()
    plain = nn.Conv2d(4, 6, kernel, padding="same", padding_mode="circular", bias=False).double()
    shape = (1, 4, *size)
    assert spectral.channel_isometry_gap(cn, shape).max < 1e-6
    assert spectral.channel_isometry_gap(plain, shape).per_channel.min() > 0.05
    # ...and so the whole ConvNorm layer has norm <= sqrt(C_out).
    assert spectral.operator_norm(cn, shape).value <= 6 ** 0.5 + 1e-6


def test_isometry_gap_requires_batch_one():
    with pytest.raises(ValueError, match="batch dim 1"):
        spectral.channel_isometry_gap(nn.Conv2d(1, 1, 3), (2, 1, 5, 5))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                      nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_network_report_rows_and_bounds():
    torch.manual_seed(0)
    model = SmallNet().double()
    inputs = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    report = spectral.network_report(model, (1, 3, 8, 8), inputs=inputs, tol=1e-8)
    assert [r["name"] for r in report.rows] == ["features.0", "features.2", "features.4", "fc"]
    assert [r["input_shape"] for r in report.rows][1] == [1, 8, 8, 8]
    assert "isometry_gap_max" not in report.rows[-1] and "isometry_gap_max" in report.rows[0]
    norms = [r["spectral_norm"] for r in report.rows]
    assert abs(report.lipschitz_upper - np.prod(norms)) < 1e-9 * report.lipschitz_upper
    # A plain chain with ReLU: the empirical lower bound cannot exceed the product bound.
    assert 0 < report.lipschitz_lower <= report.lipschitz_upper * (1 + 1e-6)
    # The per-input Jacobian norm is the dense Jacobian's top singular value.
    jac = torch.autograd.functional.jacobian(lambda x: model(x[None])[0], inputs[0])
    expected = torch.linalg.matrix_norm(jac.reshape(5, -1), ord=2)
    got = spectral.input_jacobian_norms(model, inputs[:1], iterations=200)[0]
    assert abs(float(got) - float(expected)) < 1e-6 * float(expected)
    md = report.to_markdown("test")
    assert "features.2" in md and "Lipschitz" in md
    assert report.to_dict()["rows"][0]["type"] == "Conv2d"
    assert model.training  # restored


def test_network_report_sees_convnorm_layers_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    plain = SmallNet().double()
    cn = convert_convnorm(SmallNet().double())
    inputs = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    reports = {name: spectral.network_report(m, (1, 3, 8, 8), inputs=inputs)
               for name, m in [("Vanilla", plain), ("ConvNorm", cn)]}
    assert reports["ConvNorm"].rows[0]["type"] == "ConvNorm2d"
    # The lower bound goes through ConvNorm's custom autograd Function: check it against the dense Jacobian.
    cn.eval()
    jac = torch.autograd.functional.jacobian(lambda x: cn(x[None])[0], inputs[1])
    expected = torch.linalg.matrix_norm(jac.reshape(5, -1), ord=2)
    got = spectral.input_jacobian_norms(cn, inputs[1:2], iterations=200)[0]
    assert abs(float(got) - float(expected)) < 1e-6 * float(expected)
    path = spectral.plot_layer_norms(reports, str(tmp_path / "norms.png"))
    assert (tmp_path / "norms.png").stat().st_size > 1000 and path.endswith("norms.png")
