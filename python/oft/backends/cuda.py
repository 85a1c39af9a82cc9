"""CUDA kernels of oft's torch ops (``oft._core.CudaRotation``; builds with OFT_PYTHON_CUDA).

One operator per device, dtype, shape, parameterization and stream, so its calls are
stream-ordered and construct nothing after the first; at most ``CACHE_SIZE`` of them, least
recently used dropped first. ``oft._core.CudaRotation`` refuses a parameterization without a CUDA
kernel (CUDA has cayley, cayley_neumann and peft_neumann with T >= 3) with a ValueError.
"""
from __future__ import annotations

import torch

from .. import _core, _ops
from .._ops import kernel_dtype, kernel_theta, parameterization, rows
from . import OperatorCache

CACHE_SIZE = 64
_operators = OperatorCache(CACHE_SIZE)


def operator(x: torch.Tensor, block_size: int, shared: bool, kind: str, terms: int, tol: float):
    stream = torch.cuda.current_stream(x.device).cuda_stream

    def make():
        with torch.cuda.device(x.device):
            return _core.CudaRotation(x.shape[-1], block_size, shared,
                                      parameterization(kind, terms, tol), kernel_dtype(x.dtype))

    key = (x.device, x.dtype, x.shape[-1], block_size, shared, kind, terms, tol, stream)
    return _operators.get(key, make), stream


def rotate(x, theta, block_size, shared, kind, terms, tol):
    x2 = rows(x)
    op, stream = operator(x, block_size, shared, kind, terms, tol)
    op.set_generators(kernel_theta(theta, x), stream)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    op.apply(x2, y, False, stream)
    return y.view(x.shape)


def rotate_backward(x, theta, dy, block_size, shared, kind, terms, tol, want_dx, want_dtheta):
    x2, dy2 = rows(x), rows(dy)
    op, stream = operator(x, block_size, shared, kind, terms, tol)
    theta_c = kernel_theta(theta, x)
    op.set_generators(theta_c, stream)
    dx = torch.empty(x2.shape, dtype=x.dtype, device=x.device) if want_dx else None
    dtheta = torch.empty_like(theta_c) if want_dtheta else None
    if x2.shape[0] == 0:
        if dtheta is not None:
            dtheta.zero_()
    else:
        workspace = torch.empty(op.workspace_bytes(x2.shape[0]), dtype=torch.uint8,
                                device=x.device)
        op.backward(x2, dy2, dx, dtheta, workspace, stream)
    empty = x.new_empty(0)
    return (dx.view(x.shape) if want_dx else empty,
            dtheta.to(theta.dtype) if want_dtheta else empty)


torch.library.register_kernel("oft::rotate", "cuda", rotate)
_ops._EAGER_KERNELS["cuda"] = (rotate, rotate_backward)
torch.library.register_kernel("oft::rotate_backward", "cuda", rotate_backward)
