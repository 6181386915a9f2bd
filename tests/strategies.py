"""Hypothesis strategies for conv geometries that PyTorch accepts."""
from __future__ import annotations

from hypothesis import strategies as st

MODES = ("zeros", "reflect", "replicate", "circular")


@st.composite
def conv_configs(draw, dims=st.sampled_from([1, 2, 3]), modes=st.sampled_from(MODES), max_extra=3):
    """A dict of conv options plus an input size valid for them."""
    n = draw(dims)
    max_k = 5 if n < 3 else 3
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    mode = draw(modes)
    same = draw(st.booleans()) if n < 3 else False
    if same:
        stride = (1,) * n
        padding = "same"
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
        padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    groups = draw(st.integers(1, 2))
    cpg_in = draw(st.integers(1, 2))
    cpg_out = draw(st.integers(1, 2)) if n < 3 else 1
    size = []
    for m in range(n):
        span = dilation[m] * (kernel[m] - 1)
        if padding == "same":
            pl, pr = span // 2, span - span // 2
        else:
            pl = pr = padding[m]
        lo = max(1, span + 1 - pl - pr)
        if mode == "reflect":
            lo = max(lo, pl + 1, pr + 1)  # PyTorch: reflect padding < input size
        if mode == "circular":
            lo = max(lo, pl, pr)  # PyTorch: circular padding <= input size
        extra = max_extra if n < 3 else 1
        size.append(draw(st.integers(lo, lo + extra)))
    return dict(
        dims=n,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        in_channels=groups * cpg_in,
        out_channels=groups * cpg_out,
        padding_mode=mode,
        size=tuple(size),
        batch=draw(st.integers(1, 2)),
    )


def fourier_applies(cfg) -> bool:
    """Whether ``algorithm='fourier'`` takes a drawn geometry: it needs a kernel with more than
    one tap along every spatial dim (see conv_norm)."""
    from convnorm.functional import _plan, _side_padding

    plan = _plan(cfg["size"], cfg["kernel"], cfg["stride"], _side_padding(cfg["padding"], cfg["kernel"], cfg["dilation"]),
                 cfg["dilation"], cfg["padding_mode"])
    return plan.fourier_ok or not plan.active  # 1x1 kernels: the folded path, any algorithm
