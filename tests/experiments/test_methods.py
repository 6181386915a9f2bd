"""The method registry and the baselines it uses: ONI, OCNN, spectral norm, ConvNorm."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnorm import ConvNorm2d
from convnorm.experiments.baselines import ONIConv2d, ocnn_loss, ocnn_penalty, ocnn_weight_penalty, oni_orthogonalize
from convnorm.experiments.methods import METHODS, Method, apply_method
from convnorm.experiments.models import build_model

# Small widths keep every model fast; the structure (stems, shortcuts, pools) is the real one.
SMALL = {
    "small_resnet": dict(widths=(4, 8, 8)),
    "resnet18": dict(widths=(4, 8, 8, 8)),
    "vgg16": dict(widths=(4, 8, 8, 8, 8)),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs_and_bns(model: nn.Module):
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return convs, bns


# -- registry -------------------------------------------------------------------------------
def test_methods_names():
    assert METHODS == ("plain", "bn", "convnorm", "convnorm+bn", "convnorm-paper", "sn", "oni", "ocnn")


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="convnorm\\+bn.*ocnn"):
        apply_method(build_model("small_resnet", **SMALL["small_resnet"]), "batchnorm")


@pytest.mark.parametrize("method", ["bn", "plain"])
def test_options_a_method_does_not_take_raise(method):
    with pytest.raises(TypeError):
        apply_method(build_model("small_resnet"), method, T=3)
    with pytest.raises(TypeError, match="accepts"):
        apply_method(build_model("small_resnet"), "oni", n_power_iterations=3)


def expected_params(model: nn.Module, method: str) -> int:
    """What each method should do to the parameter count of a Conv + BN model."""
    convs, bns = convs_and_bns(model)
    base = n_params(model)
    bn_params = sum(m.weight.numel() + m.bias.numel() for m in bns)
    # ConvNorm2d's affine: a depthwise (C_out, 1, k_h, k_w) kernel and a (C_out,) bias.
    affine = sum(c.out_channels * (c.kernel_size[0] * c.kernel_size[1] + 1) for c in convs)
    return {
        "plain": base - bn_params,
        "bn": base,
        "convnorm": base - bn_params + affine,
        "convnorm+bn": base + affine,
        "convnorm-paper": base + affine,
        "sn": base,
        "oni": base + sum(c.out_channels for c in convs),  # the per-channel scale
        "ocnn": base,
    }[method]


@pytest.mark.parametrize("method", METHODS)
def test_small_resnet_every_method_trains(method):
    torch.manual_seed(0)
    model = build_model("small_resnet", in_channels=1, num_classes=5, **SMALL["small_resnet"])
    n_convs = len(convs_and_bns(model)[0])
    expected = expected_params(model, method)
    m = apply_method(model, method)
    assert isinstance(m, Method) and m.name == method
    assert n_params(m.model) == expected
    modules = list(m.model.modules())
    kinds = {
        "plain": (nn.Conv2d, n_convs), "bn": (nn.Conv2d, n_convs), "ocnn": (nn.Conv2d, n_convs),
        "convnorm": (ConvNorm2d, n_convs), "convnorm+bn": (ConvNorm2d, n_convs), "oni": (ONIConv2d, n_convs),
        "convnorm-paper": (ConvNorm2d, n_convs),
    }
    if method in kinds:
        cls, count = kinds[method]
        assert sum(type(x) is cls for x in modules) == count
    else:  # sn: parametrized convs
        assert sum(isinstance(x, nn.Conv2d) and hasattr(x, "parametrizations") for x in modules) == n_convs
    has_bn = any(isinstance(x, nn.BatchNorm2d) for x in modules)
    assert has_bn == (method not in ("plain", "convnorm"))
    assert isinstance(m.model.fc, nn.Linear)  # the classifier is left alone by every method
    assert (m.regularizer is not None) == (method == "ocnn")

    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 5, (3,))
    loss = F.cross_entropy(m.model(x), y)
    if m.regularizer is not None:
        loss = loss + m.regularizer()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("method", METHODS)
def test_big_models_forward_under_every_method(name, method):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **SMALL[name])
    expected = expected_params(model, method)
    m = apply_method(model, method)
    assert n_params(m.model) == expected
    with torch.no_grad():
        out = m.model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_convnorm_options_reach_the_layers():
    m = apply_method(build_model("small_resnet"), "convnorm", affine=False, eps=1e-3)
    layers = [x for x in m.model.modules() if isinstance(x, ConvNorm2d)]
    assert layers and all(not x.affine and x.eps == 1e-3 for x in layers)
    assert m.options == {"affine": False, "eps": 1e-3}


def test_methods_work_on_a_root_conv_and_leave_subclasses_alone():
    conv = nn.Conv2d(3, 4, 3)
    assert type(apply_method(conv, "oni").model) is ONIConv2d
    already = ONIConv2d(3, 4, 3)
    model = nn.Sequential(already, nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    out = apply_method(model, "oni").model
    assert out[0] is already and type(out[2]) is ONIConv2d


def test_oni_method_shares_weights_and_applies_options():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8))
    w, b = model[0].weight, model[0].bias
    m = apply_method(model, "oni", T=3, learn_scale=False)
    oni = m.model[0]
    assert oni.weight is w and oni.bias is b and oni.T == 3
    assert "scale" in dict(oni.named_buffers()) and n_params(m.model) == n_params(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    assert m.options["T"] == 3 and m.options["scale_init"] == 1.414


# -- ONI ------------------------------------------------------------------------------------
def predicted_gram_eigenvalues(w: np.ndarray, T: int) -> np.ndarray:
    """Independent prediction: eigenvalues b_T(λ)^2 λ of W W^T (wide) / W^T W (tall)."""
    z = w.reshape(w.shape[0], -1)
    if z.shape[0] > z.shape[1]:
        z = z.T
    z = z - z.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(z @ z.T)
    lam = lam / np.sqrt(np.sum(lam**2))  # eigenvalues of S / ||S||_F
    b = np.ones_like(lam)
    for _ in range(T):
        b = 1.5 * b - 0.5 * b**3 * lam
    return np.sort(b**2 * lam)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (24, 2, 2, 2)], ids=["wide", "tall"])
def test_oni_converges_to_orthonormal_rows_or_columns(shape):
    torch.manual_seed(1)
    weight = torch.randn(*shape, dtype=torch.float64)
    errors = []
    for T in (1, 3, 5, 10):
        w = oni_orthogonalize(weight, T, eps=0.0).reshape(shape[0], -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        eig = np.sort(np.linalg.eigvalsh(gram.numpy()))
        np.testing.assert_allclose(eig, predicted_gram_eigenvalues(weight.numpy(), T), atol=1e-10)
        errors.append((gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[1] < 0.5 and errors[2] < 0.05 and errors[3] < 1e-9, errors


def test_oni_centring_and_square_weights():
    torch.manual_seed(2)
    # A well-conditioned square weight (singular values in [0.5, 1]): the uncoupled Newton
    # iteration is unstable for ill-conditioned S, which a random square matrix often is.
    u, v = orthogonal(5, 5), orthogonal(5, 5)
    weight = (u @ torch.diag(torch.linspace(0.5, 1.0, 5, dtype=torch.float64)) @ v).reshape(5, 5, 1, 1)
    w = oni_orthogonalize(weight, 10, eps=0.0, centre=False).reshape(5, 5)
    torch.testing.assert_close(w @ w.T, torch.eye(5, dtype=torch.float64), atol=1e-9, rtol=0)
    # Centred rows of a square matrix span 4 dimensions: one singular value is lost.
    s = torch.linalg.svdvals(oni_orthogonalize(weight, 8, eps=1e-5).reshape(5, 5))
    torch.testing.assert_close(s[:4], torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0)
    assert s[4] < 1e-2
    # Centring is along the long side: rows (wide) or columns (tall) sum to zero.
    wide = oni_orthogonalize(torch.randn(3, 2, 3, 3, dtype=torch.float64), 5).reshape(3, -1)
    tall = oni_orthogonalize(torch.randn(20, 1, 2, 2, dtype=torch.float64), 5).reshape(20, -1)
    torch.testing.assert_close(wide.sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(tall.sum(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_oni_groups_are_orthogonalized_separately():
    torch.manual_seed(3)
    weight = torch.randn(8, 16, 1, 1, dtype=torch.float64)  # groups=2: two 4 x 16 wide blocks
    w = oni_orthogonalize(weight, 10, groups=2, eps=0.0)
    for g in range(2):
        block = weight[4 * g:4 * (g + 1)]
        torch.testing.assert_close(w[4 * g:4 * (g + 1)], oni_orthogonalize(block, 10, eps=0.0))
        z = w[4 * g:4 * (g + 1)].reshape(4, 16)
        torch.testing.assert_close(z @ z.T, torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)


def test_oni_conv_forward_and_options():
    torch.manual_seed(4)
    conv = ONIConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True, T=3, dtype=torch.float64)
    assert conv.scale.shape == (6, 1, 1, 1) and torch.all(conv.scale == 1.414)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    expected = F.conv2d(x, 1.414 * oni_orthogonalize(conv.weight, 3, groups=2), conv.bias, 2, 1, 1, 2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x[0]).shape == expected.shape[1:]
    assert "T=3" in repr(conv)
    assert ONIConv2d(4, 6, 3, scale_init=None).scale is None
    with pytest.raises(ValueError, match="T"):
        ONIConv2d(4, 6, 3, T=-1)
    with pytest.raises(ValueError, match="groups"):
        oni_orthogonalize(torch.randn(6, 2, 3, 3), groups=4)
    # The gradient reaches the raw weight and the scale; a state_dict round trip is exact.
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.scale.grad is not None
    clone = ONIConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True, T=3, dtype=torch.float64)
    clone.load_state_dict(conv.state_dict())
    torch.testing.assert_close(clone(x), conv(x))


# -- OCNN -----------------------------------------------------------------------------------
def ocnn_reference(weight: np.ndarray, stride: int, groups: int = 1) -> float:
    """Σ over shifts s (multiples of the stride) of ||Σ_p K_p+s K_p^T - δ_s I||², per group."""
    c_out, _, kh, kw = weight.shape
    n = c_out // groups
    total = 0.0
    for g in range(groups):
        k = weight[g * n:(g + 1) * n]
        pad = ((kh - 1) // stride) * stride
        for sy in range(-pad, pad + 1, stride):
            for sx in range(-pad, pad + 1, stride):
                m = np.zeros((n, n))
                for py in range(kh):
                    for px in range(kw):
                        qy, qx = py + sy, px + sx
                        if 0 <= qy < kh and 0 <= qx < kw:
                            m += k[:, :, qy, qx] @ k[:, :, py, px].T
                if sy == 0 and sx == 0:
                    m -= np.eye(n)
                total += np.sum(m**2)
    return total


@pytest.mark.parametrize("k,stride,groups", [(1, 1, 1), (3, 1, 1), (3, 2, 1), (5, 2, 2), (5, 3, 1), (4, 2, 1)])
def test_ocnn_penalty_matches_explicit_sum_over_shifts(k, stride, groups):
    torch.manual_seed(5)
    weight = torch.randn(6, 4, k, k, dtype=torch.float64)
    got = ocnn_weight_penalty(weight, stride, groups=groups)
    np.testing.assert_allclose(got.item(), ocnn_reference(weight.numpy(), stride, groups), rtol=1e-10)


def test_ocnn_dilation_is_the_dense_dilated_kernel():
    torch.manual_seed(6)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    dense = torch.zeros(3, 2, 5, 5, dtype=torch.float64)
    dense[..., ::2, ::2] = weight
    torch.testing.assert_close(ocnn_weight_penalty(weight, 2, dilation=2), ocnn_weight_penalty(dense, 2))


def orthogonal(n: int, m: int) -> torch.Tensor:
    """An n x m matrix with orthonormal rows (n <= m)."""
    q, _ = torch.linalg.qr(torch.randn(m, n, dtype=torch.float64))
    return q.T


@pytest.mark.parametrize("stride", [1, 2])
def test_ocnn_is_zero_for_orthogonal_convs_and_positive_otherwise(stride):
    torch.manual_seed(7)
    square = nn.Conv2d(4, 4, 1, stride=stride, bias=False).double()
    wide = nn.Conv2d(6, 4, 1, stride=stride, bias=False).double()
    centre_tap = nn.Conv2d(4, 4, 3, stride=stride, padding=1, bias=False).double()
    with torch.no_grad():
        square.weight.copy_(orthogonal(4, 4)[:, :, None, None])
        wide.weight.copy_(orthogonal(4, 6)[:, :, None, None])
        centre_tap.weight.zero_()
        centre_tap.weight[:, :, 1, 1] = orthogonal(4, 4)
    for conv in (square, wide, centre_tap):
        assert ocnn_penalty(conv).item() < 1e-20
    assert ocnn_penalty(nn.Conv2d(4, 4, 3, stride=stride).double()).item() > 0.1


def test_ocnn_sees_the_stride():
    # Two output channels read input channel 0 at horizontally adjacent taps: with stride 1
    # a row of one equals a shifted row of the other (not orthogonal), with stride 2 the
    # shift by one pixel never occurs and the operator has orthonormal rows.
    weight = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = weight[1, 0, 1, 2] = 1.0
    assert ocnn_weight_penalty(weight, 1).item() == pytest.approx(2.0)
    assert ocnn_weight_penalty(weight, 2).item() == pytest.approx(0.0)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 2)])
def test_ocnn_gradient_matches_finite_differences(stride, groups):
    torch.manual_seed(8)
    weight = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: ocnn_weight_penalty(w, stride, groups=groups), (weight,))


def test_ocnn_loss_sums_every_conv_and_the_method_regularizer_uses_it():
    torch.manual_seed(9)
    model = build_model("small_resnet", **SMALL["small_resnet"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(c.kernel_size == (1, 1) for c in convs)  # the shortcuts count too
    total = sum(ocnn_penalty(c) for c in convs)
    torch.testing.assert_close(ocnn_loss(model), total)
    m = apply_method(model, "ocnn", weight=0.5)
    torch.testing.assert_close(m.regularizer(), 0.5 * total)
    m.regularizer().backward()
    assert all(c.weight.grad is not None for c in convs)
    assert ocnn_loss(nn.Linear(2, 2)).item() == 0.0


# -- spectral norm --------------------------------------------------------------------------
def test_sn_weight_matrix_has_unit_spectral_norm():
    torch.manual_seed(10)
    model = build_model("small_resnet", **SMALL["small_resnet"])
    # Small layers have close top singular values, so power iteration converges slowly:
    # 10 iterations per forward (an option of the method) get there in a few steps.
    m = apply_method(model, "sn", n_power_iterations=10)
    assert m.options == {"n_power_iterations": 10, "eps": 1e-12}
    m.model.train()
    for _ in range(10):
        with torch.no_grad():
            m.model(torch.randn(2, 3, 16, 16))
    convs = [x for x in m.model.modules() if isinstance(x, nn.Conv2d)]
    assert convs
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(conv.out_channels, -1), ord=2)
        assert abs(sigma.item() - 1.0) < 1e-3, sigma


def test_convert_leaves_the_input_usable_via_deepcopy():
    model = build_model("small_resnet", **SMALL["small_resnet"])
    kept = copy.deepcopy(model)
    apply_method(model, "convnorm")
    assert any(isinstance(x, nn.BatchNorm2d) for x in kept.modules())
