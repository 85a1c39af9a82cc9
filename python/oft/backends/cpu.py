"""CPU kernels of oft's torch ops (``oft._core.Rotation``).

Operators are cached per (features, block size, shared, parameterization, dtype), so a call
constructs nothing after the first, as on CUDA. An operator holds state (its R, set from theta by
each call), so each thread has its own cache (``threading.local``): calls from several threads
(autograd's, a DataLoader's, gloo's) never share one. Each thread keeps at most ``CACHE_SIZE``
operators, least recently used dropped first; a thread's cache goes when the thread ends.
"""
from __future__ import annotations

import threading

import torch

from .. import _core
from .._ops import kernel_dtype, kernel_theta, parameterization, rows
from . import OperatorCache

CACHE_SIZE = 32
BF16_ARITHMETICS = ("float", "dot_product")
# The bfloat16 arithmetic: dot_product (vdpbf16ps) where this build of oft._core has it.
bf16_arithmetic = "dot_product" if _core.has_bf16_dot_product else "float"

_local = threading.local()


def _cache() -> OperatorCache:
    cache = getattr(_local, "operators", None)
    if cache is None:
        cache = _local.operators = OperatorCache(CACHE_SIZE)
    return cache


def operator(dtype: torch.dtype, features: int, block_size: int, shared: bool, kind: str,
             terms: int, tol: float) -> _core.Rotation:
    """This thread's operator for activations of ``dtype`` (bfloat16: the float32 operator)."""
    op = _cache().get(
        (dtype, features, block_size, shared, kind, terms, tol),
        lambda: _core.Rotation(features, block_size, shared, parameterization(kind, terms, tol),
                               kernel_dtype(dtype)))
    if dtype == torch.bfloat16:
        op.bf16_arithmetic = bf16_arithmetic
    return op


@torch.library.register_kernel("oft::rotate", "cpu")
def rotate(x, theta, block_size, shared, kind, terms, tol):
    x2 = rows(x)
    op = operator(x.dtype, x.shape[-1], block_size, shared, kind, terms, tol)
    op.set_generators(kernel_theta(theta, x))
    y = torch.empty(x2.shape, dtype=x.dtype)
    op.apply(x2, y)
    return y.view(x.shape)


@torch.library.register_kernel("oft::rotate_backward", "cpu")
def rotate_backward(x, theta, dy, block_size, shared, kind, terms, tol, want_dx, want_dtheta):
    x2, dy2 = rows(x), rows(dy)
    op = operator(x.dtype, x.shape[-1], block_size, shared, kind, terms, tol)
    theta_c = kernel_theta(theta, x)
    op.set_generators(theta_c)
    dx = torch.empty(x2.shape, dtype=x.dtype) if want_dx else None
    dtheta = torch.empty_like(theta_c) if want_dtheta else None
    op.backward(x2, dy2, dx, dtheta)
    empty = x.new_empty(0)
    return (dx.view(x.shape) if want_dx else empty,
            dtheta.to(theta.dtype) if want_dtheta else empty)


@torch.library.register_kernel("oft::rotation_blocks", "cpu")
def rotation_blocks(theta, block_size, kind, terms, tol):
    g = theta.shape[0]
    op = operator(theta.dtype, g * block_size, block_size, False, kind, terms, tol)
    op.set_generators(theta.detach().contiguous())
    out = torch.empty((g, block_size, block_size), dtype=theta.dtype)
    op.rotation_blocks(out.view(g * block_size, block_size))
    return out


@torch.library.register_kernel("oft::rotation_blocks_backward", "cpu")
def rotation_blocks_backward(theta, grad, block_size, kind, terms, tol):
    g = theta.shape[0]
    op = operator(theta.dtype, g * block_size, block_size, False, kind, terms, tol)
    op.set_generators(theta.detach().contiguous())
    dtheta = torch.empty(theta.shape, dtype=theta.dtype)
    op.backward_from_blocks(grad.detach().contiguous().view(g * block_size, block_size), dtheta)
    return dtheta
