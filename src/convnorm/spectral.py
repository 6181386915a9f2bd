"""Layer spectra, operator norms, Lipschitz bounds and channel-wise isometry.

Everything here treats a layer as the linear map it applies to its input (the bias, and
any other constant offset, removed): ``A x = f(x) - f(0)``. Its adjoint is the
vector-Jacobian product of ``f``, so any layer or block that is affine in its input
works, whatever its padding, stride or normalization (call ``.eval()`` first on layers
with batch statistics).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from convnorm.functional import kernel_dft

__all__ = [
    "circular_conv_singular_values",
    "operator_norm",
    "OperatorNorm",
    "channel_isometry_gap",
    "IsometryGap",
    "network_report",
    "NetworkReport",
    "plot_layer_norms",
]


def circular_conv_singular_values(weight: Tensor, grid_size, *, dilation=1, groups: int = 1) -> Tensor:
    """Every singular value of a stride-1 convolution on a circular grid.

    The DFT block-diagonalizes the operator (Sedghi, Gupta & Long, ICLR 2019): its singular
    values are those of the ``C_out x C_in`` matrices ``â(ω)``, one per frequency ω (per
    group, block-diagonal across groups). Correlation and convolution have the same ones.

    Args:
        weight: ``(C_out, C_in / groups, k_1, ..., k_n)``.
        grid_size: the circular grid ``(N_1, ..., N_n)`` (an int for all dims).
        dilation: kernel dilation.
        groups: conv groups.

    Returns:
        1-D tensor of the ``prod(N) * groups * min(C_out/g, C_in/g)`` singular values,
        in descending order (float64 for a float64 weight, else float32).
    """
    if weight.dim() < 3:
        raise ValueError(f"weight must be (C_out, C_in/groups, *kernel), got shape {tuple(weight.shape)}")
    c_out, c_in_g = weight.shape[:2]
    if c_out % groups:
        raise ValueError(f"C_out={c_out} is not divisible by groups={groups}")
    a = kernel_dft(weight, grid_size, dilation=dilation)  # (C_out, C_in/g, *grid)
    n_freq = math.prod(a.shape[2:])
    blocks = a.reshape(groups, c_out // groups, c_in_g, n_freq).permute(3, 0, 1, 2)
    sv = torch.linalg.svdvals(blocks)  # (F, g, min)
    return sv.flatten().sort(descending=True).values


def _linear_part(fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
    with torch.no_grad():
        offset = fn(torch.zeros_like(example))
    return lambda x: fn(x) - offset


def _adjoint(fn: Callable[[Tensor], Tensor], x: Tensor, cotangent: Tensor) -> Tensor:
    """Aᵀ u for the linear part A of an affine ``fn`` (vector-Jacobian product)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(x), x, cotangent)
    return grad


@dataclass
class OperatorNorm:
    """Largest singular value of a linear map, estimated by power iteration.

    ``value`` is the estimate, ``iterations`` how many steps ran, ``converged`` whether the
    relative change of the estimate fell below the tolerance, ``relative_change`` its last
    value. ``float(result)`` is ``value``.
    """

    value: float
    iterations: int
    converged: bool
    relative_change: float

    def __float__(self) -> float:
        return self.value


def operator_norm(
    layer: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> OperatorNorm:
    """The spectral norm ``‖A‖₂`` of the linear part of ``layer`` on inputs of ``input_shape``.

    Power iteration on ``AᵀA`` with ``A v = layer(v) - layer(0)`` and ``Aᵀ u`` from autograd.

    Args:
        layer: a module or function, affine in its input (a conv with any padding and
            stride, a ConvNorm or BatchNorm in eval mode, a whole linear block).
        input_shape: the input shape including the batch dim, e.g. ``(1, C, H, W)``.
        tol: stop when the relative change of the estimate is below ``tol``.
        max_iter: iteration cap; ``converged`` is ``False`` if it is reached first.
        seed: seed of the random start vector.
        dtype, device: of the probe vectors (default: the layer's first parameter's, else
            float32 on the CPU).

    Returns:
        :class:`OperatorNorm`. Power iteration approaches ``‖A‖`` from below; its error
        after convergence is about ``tol`` relative unless the top singular values are
        nearly equal.
    """
    dtype, device = _probe_dtype_device(layer, dtype, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(tuple(input_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    A = _linear_part(layer, v)
    v = v / v.norm()
    sigma, change, it = 0.0, math.inf, 0
    for it in range(1, max_iter + 1):
        with torch.no_grad():
            u = A(v)
        w = _adjoint(A, v, u)
        new_sigma = float(w.norm().sqrt())  # ‖AᵀA v‖ -> σ²
        change = abs(new_sigma - sigma) / max(new_sigma, 1e-300)
        sigma = new_sigma
        if sigma == 0.0:
            return OperatorNorm(0.0, it, True, 0.0)
        v = w / w.norm()
        if change < tol:
            break
    with torch.no_grad():
        sigma = float(A(v).norm())  # Rayleigh estimate with the final unit vector
    return OperatorNorm(sigma, it, change < tol, change)


def _probe_dtype_device(layer, dtype, device):
    params = list(layer.parameters()) if isinstance(layer, nn.Module) else []
    if dtype is None:
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    return dtype, device


@dataclass
class IsometryGap:
    """How far each output channel's operator ``Q_i`` is from a tight frame.

    ``per_channel[i] = ‖Q_i Q_iᵀ - I‖₂ = max_j |σ_j(Q_i)² - 1|`` over all ``rows`` output
    positions of channel ``i`` (a missing singular value counts as 0). 0 means channel
    ``i`` is an exact isometry onto its output; 1 means some output direction of the
    channel is not reached at all. ``converged`` is per channel.
    """

    per_channel: Tensor
    converged: Tensor
    iterations: int

    @property
    def max(self) -> float:
        return float(self.per_channel.max())

    @property
    def mean(self) -> float:
        return float(self.per_channel.mean())


def channel_isometry_gap(
    layer: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    *,
    tol: float = 1e-5,
    max_iter: int = 300,
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> IsometryGap:
    """``‖Q_i Q_iᵀ - I‖₂`` for every output channel ``i`` of a layer's linear part.

    ``Q_i`` maps the whole input to output channel ``i``. ConvNorm makes ``Q_i Q_iᵀ = I``
    exactly for ``padding_mode='circular'`` and stride 1 (up to ``eps``). With zero
    padding, ``Q_i`` is the crop of a tight frame applied to the zero-embedded input, so
    ``Q_i Q_iᵀ ⪯ I``: the gap measures how much of the frame's energy falls into the
    cropped border band (close to 1 for output positions whose receptive field is mostly
    padding). For a plain conv the gap reflects the kernel's scale and spectrum.

    All channels are iterated at once: channel ``i``'s probe lives in batch element ``i``.

    Args:
        layer, input_shape: as for :func:`operator_norm` (batch dim 1).
        tol, max_iter, seed, dtype, device: power iteration settings.

    Returns:
        :class:`IsometryGap`.
    """
    if input_shape[0] != 1:
        raise ValueError(f"input_shape must have batch dim 1, got {tuple(input_shape)}")
    dtype, device = _probe_dtype_device(layer, dtype, device)
    probe_in = torch.zeros(tuple(input_shape), dtype=dtype, device=device)
    A = _linear_part(layer, probe_in)
    with torch.no_grad():
        out_shape = A(probe_in).shape
    if len(out_shape) < 2:
        raise ValueError(f"layer output must be (1, C_out, ...), got {tuple(out_shape)}")
    c_out = out_shape[1]
    mask = torch.eye(c_out, dtype=dtype, device=device).reshape(c_out, c_out, *([1] * (len(out_shape) - 2)))
    batch_in = probe_in.expand(c_out, *input_shape[1:])

    def gram_minus_identity(u: Tensor) -> Tensor:  # u: (C_out, C_out, *out), channel i in batch i
        back = _adjoint(A, batch_in, u)
        with torch.no_grad():
            return A(back) * mask - u

    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn((c_out, *out_shape[1:]), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) * mask
    dims = tuple(range(1, u.dim()))
    u = u / torch.linalg.vector_norm(u, dim=dims, keepdim=True)
    lam = torch.zeros(c_out, dtype=torch.float64, device=device)
    change = torch.full_like(lam, math.inf)
    it = 0
    for it in range(1, max_iter + 1):
        w = gram_minus_identity(u)
        norm = torch.linalg.vector_norm(w, dim=dims).to(torch.float64)
        change = (norm - lam).abs() / norm.clamp_min(1e-300)
        lam = norm
        u = w / norm.to(dtype).clamp_min(1e-300).reshape(-1, *([1] * len(dims)))
        if bool((change < tol).all()) or bool((lam < 1e-12).all()):
            break
    return IsometryGap(per_channel=lam.cpu(), converged=(change < tol) | (lam < 1e-12), iterations=it)


# -- whole networks ----------------------------------------------------------------------
_REPORTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class NetworkReport:
    """Per-layer spectral norms and the network's Lipschitz bounds (plain data).

    ``rows``: one dict per conv/linear layer in forward order: ``name``, ``type``,
    ``input_shape``, ``spectral_norm``, ``converged``, and for convs ``isometry_gap_max``
    and ``isometry_gap_mean``. ``lipschitz_upper`` is the product of the layer norms: an
    upper bound on the network's Lipschitz constant for a plain chain of these layers and
    1-Lipschitz activations (skip connections and normalization layers outside the rows
    are not covered by it). ``lipschitz_lower`` is ``max_x ‖J(x)‖₂`` over the given inputs,
    a lower bound on the Lipschitz constant of any network.
    """

    input_shape: List[int]
    rows: List[Dict[str, object]]
    lipschitz_upper: float
    lipschitz_lower: Optional[float]
    lower_bound_inputs: int
    settings: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "NetworkReport":
        """Rebuild a report from :meth:`to_dict` output (e.g. a JSON record)."""
        known = {f for f in cls.__dataclass_fields__}
        missing = {"input_shape", "rows", "lipschitz_upper", "lipschitz_lower", "lower_bound_inputs"} - set(data)
        if missing:
            raise ValueError(f"not a NetworkReport record: missing keys {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_markdown(self, title: str = "") -> str:
        lines = [f"## {title}", ""] if title else []
        lines += ["| # | layer | type | input | spectral norm | isometry gap (max / mean) |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rows):
            gap = "—" if r.get("isometry_gap_max") is None else f"{r['isometry_gap_max']:.3f} / {r['isometry_gap_mean']:.3f}"
            shape = "x".join(str(s) for s in r["input_shape"][1:])
            lines.append(f"| {i} | {r['name']} | {r['type']} | {shape} | {r['spectral_norm']:.4g} | {gap} |")
        lines += ["", f"Product of layer norms (Lipschitz upper bound for a plain chain): {self.lipschitz_upper:.4g}"]
        if self.lipschitz_lower is not None:
            lines.append(f"Largest input-Jacobian norm over {self.lower_bound_inputs} inputs (Lipschitz lower bound): "
                         f"{self.lipschitz_lower:.4g}")
        return "\n".join(lines) + "\n"


def _layer_inputs(model: nn.Module, example: Tensor) -> List[tuple]:
    """(name, module, input shape) of every reported layer, in forward order."""
    seen: List[tuple] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _REPORTED):
            def hook(mod, args, name=name):
                seen.append((name, mod, tuple(args[0].shape)))

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    first = {}
    for name, mod, shape in seen:  # a module called twice keeps its first input shape
        first.setdefault(name, (name, mod, shape))
    return list(first.values())


def input_jacobian_norms(model: nn.Module, inputs: Tensor, *, iterations: int = 30) -> Tensor:
    """``‖J(x)‖₂`` of ``model`` at each input (batch), by power iteration on ``JᵀJ``.

    ``J v`` comes from differentiating the vector-Jacobian product ``Jᵀu`` with respect to
    ``u`` (the double-backward trick), which needs only reverse-mode autograd, so custom
    autograd Functions without forward-mode rules (ConvNorm's preconditioner) work.
    The model must treat batch elements independently (eval mode). Returns ``(B,)``.
    """
    x = inputs.detach()
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    dims = tuple(range(1, x.dim()))
    v = v / torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    sigma = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(iterations):
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            y = model(xg)
            u = torch.zeros_like(y, requires_grad=True)
            (jtu,) = torch.autograd.grad(y, xg, u, create_graph=True)  # Jᵀu, linear in u
            (jv,) = torch.autograd.grad(jtu, u, v)
            (jtjv,) = torch.autograd.grad(y, xg, jv)
        norm = jtjv.flatten(1).norm(dim=1)
        sigma = norm.double().sqrt().cpu()
        v = jtjv / norm.clamp_min(1e-30).reshape(-1, *([1] * len(dims)))
    return sigma


def network_report(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    inputs: Optional[Tensor] = None,
    isometry: bool = True,
    tol: float = 1e-5,
    max_iter: int = 300,
) -> NetworkReport:
    """One row per conv/linear layer, with spectral norms, isometry gaps and bounds.

    Args:
        model: the network; it is evaluated in eval mode (and restored afterwards).
        input_shape: the network's input shape with batch dim, e.g. ``(1, 3, 32, 32)``;
            each layer is measured on the input shape it sees in that forward pass.
        inputs: real inputs ``(B, ...)`` for the empirical lower bound (skipped if None).
        isometry: also compute channel isometry gaps of conv layers.
        tol, max_iter: power iteration settings for every layer.

    Returns:
        :class:`NetworkReport`.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        example = torch.zeros(tuple(input_shape), dtype=dtype, device=device)
        rows = []
        for name, module, shape in _layer_inputs(model, example):
            shape = (1,) + tuple(shape[1:])
            norm = operator_norm(module, shape, tol=tol, max_iter=max_iter)
            row = dict(name=name, type=type(module).__name__, input_shape=list(shape),
                       spectral_norm=norm.value, converged=norm.converged, iterations=norm.iterations)
            if isometry and not isinstance(module, nn.Linear):
                gap = channel_isometry_gap(module, shape, tol=tol, max_iter=max_iter)
                row.update(isometry_gap_max=gap.max, isometry_gap_mean=gap.mean,
                           isometry_converged=bool(gap.converged.all()))
            rows.append(row)
        upper = math.prod(r["spectral_norm"] for r in rows)
        lower = None
        if inputs is not None:
            lower = float(input_jacobian_norms(model, inputs.to(device=device, dtype=dtype)).max())
        return NetworkReport(
            input_shape=list(input_shape), rows=rows, lipschitz_upper=upper, lipschitz_lower=lower,
            lower_bound_inputs=0 if inputs is None else int(inputs.shape[0]),
            settings=dict(tol=tol, max_iter=max_iter),
        )
    finally:
        model.train(was_training)


def plot_layer_norms(reports: Dict[str, NetworkReport], path: str, *, title: str = "Layer spectral norms") -> str:
    """Grouped bar chart of per-layer spectral norms, one colour per report (needs matplotlib).

    Args:
        reports: label -> report, e.g. ``{"Vanilla": r0, "ConvNorm": r1}``; the reports
            must list the same layers.
        path: PNG file to write.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("plot_layer_norms needs matplotlib: pip install 'convnorm[plot]'") from err
    labels = list(reports)
    n_layers = max(len(r.rows) for r in reports.values())
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n_layers), 3.6))
    for k, label in enumerate(labels):
        norms = [r["spectral_norm"] for r in reports[label].rows]
        ax.bar([i + (k - (len(labels) - 1) / 2) * width for i in range(len(norms))], norms, width, label=label)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("spectral norm")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xticks(range(n_layers))
    ax.legend()
    fig.tight_layout()
    # No software/date metadata, so a chart regenerated from the same records is byte-identical.
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path
