"""CPU kernels of oft's torch ops (``oft._core.Rotation``).

Operators are cached per (dtype, features, block size, shared, parameterization, terms, tol) and
theta's memory (its data pointer), so a call constructs nothing after the first, as on CUDA, and
each parameter keeps its own R. The forward always computes R from theta (theta may have changed
in place, even through ``.data``); the backward skips that when the operator's R came from the
same theta memory at the same ``theta._version`` (the check autograd makes of its own saved
tensors), which saves one theta -> R (``O(r b^3)``) per forward + backward. The cache holds a
reference to that theta, so its memory cannot be reused by another tensor while cached.

An operator holds state (its R), so each thread has its own cache (``threading.local``): calls
from several threads (autograd's, a DataLoader's, gloo's) never share one. Each thread keeps at
most ``CACHE_SIZE`` operators and ``CACHE_BYTES`` of R (d * b scalars an operator), least
recently used dropped first; a thread's cache goes when the thread ends.
"""
from __future__ import annotations

import threading

import torch

from .. import _core, _ops
from .._ops import kernel_dtype, kernel_theta, parameterization, rows
from . import OperatorCache

CACHE_SIZE = 128
CACHE_BYTES = 64 << 20
BF16_ARITHMETICS = ("float", "dot_product")
# The bfloat16 arithmetic: dot_product (vdpbf16ps) where this build of oft._core has it.
bf16_arithmetic = "dot_product" if _core.has_bf16_dot_product else "float"

_local = threading.local()


class _Entry:
    __slots__ = ("op", "theta", "version")

    def __init__(self, op):
        self.op, self.theta, self.version = op, None, -1


def _cache() -> OperatorCache:
    cache = getattr(_local, "operators", None)
    if cache is None:
        cache = _local.operators = OperatorCache(CACHE_SIZE, CACHE_BYTES)
    return cache


def _entry(dtype, features, block_size, shared, kind, terms, tol, theta=None) -> _Entry:
    key = (dtype, features, block_size, shared, kind, terms, tol,
           None if theta is None else (theta.data_ptr(), theta.dtype))
    entry = _cache().get(
        key,
        lambda: _Entry(_core.Rotation(features, block_size, shared,
                                      parameterization(kind, terms, tol), kernel_dtype(dtype))),
        features * block_size * (8 if dtype == torch.float64 else 4))
    if dtype == torch.bfloat16:
        entry.op.bf16_arithmetic = bf16_arithmetic
    return entry


def operator(dtype: torch.dtype, features: int, block_size: int, shared: bool, kind: str,
             terms: int, tol: float) -> _core.Rotation:
    """This thread's operator for activations of ``dtype`` (bfloat16: the float32 operator)."""
    return _entry(dtype, features, block_size, shared, kind, terms, tol).op


def _set_generators(entry: _Entry, theta, x) -> None:
    entry.op.set_generators(kernel_theta(theta, x))
    # Inference tensors have no version counter: never reused.
    entry.theta, entry.version = theta, -1 if theta.is_inference() else theta._version


def rotate(x, theta, block_size, shared, kind, terms, tol):
    x2 = rows(x)
    entry = _entry(x.dtype, x.shape[-1], block_size, shared, kind, terms, tol, theta)
    _set_generators(entry, theta, x)  # always: theta may have changed since the last call
    y = torch.empty(x2.shape, dtype=x.dtype)
    entry.op.apply(x2, y)
    return y.view(x.shape)


def rotate_backward(x, theta, dy, block_size, shared, kind, terms, tol, want_dx, want_dtheta):
    x2, dy2 = rows(x), rows(dy)
    entry = _entry(x.dtype, x.shape[-1], block_size, shared, kind, terms, tol, theta)
    if entry.version < 0 or theta.is_inference() or entry.version != theta._version:
        _set_generators(entry, theta, x)  # else R is still the forward's, from this theta
    dx = torch.empty(x2.shape, dtype=x.dtype) if want_dx else None
    dtheta = (torch.empty(theta.shape, dtype=torch.float64 if x.dtype == torch.float64
                          else torch.float32) if want_dtheta else None)
    entry.op.backward(x2, dy2, dx, dtheta)
    empty = x.new_empty(0)
    return (dx.view(x.shape) if want_dx else empty,
            dtheta.to(theta.dtype) if want_dtheta else empty)


def rotation_blocks(theta, block_size, kind, terms, tol):
    g = theta.shape[0]
    op = operator(theta.dtype, g * block_size, block_size, False, kind, terms, tol)
    op.set_generators(theta.detach().contiguous())
    out = torch.empty((g, block_size, block_size), dtype=theta.dtype)
    op.rotation_blocks(out.view(g * block_size, block_size))
    return out


def rotation_blocks_backward(theta, grad, block_size, kind, terms, tol):
    g = theta.shape[0]
    op = operator(theta.dtype, g * block_size, block_size, False, kind, terms, tol)
    op.set_generators(theta.detach().contiguous())
    dtheta = torch.empty(theta.shape, dtype=theta.dtype)
    op.backward_from_blocks(grad.detach().contiguous().view(g * block_size, block_size), dtheta)
    return dtheta


torch.library.register_kernel("oft::rotate", "cpu", rotate)
_ops._EAGER_KERNELS["cpu"] = (rotate, rotate_backward)
torch.library.register_kernel("oft::rotate_backward", "cpu", rotate_backward)
torch.library.register_kernel("oft::rotation_blocks", "cpu", rotation_blocks)
torch.library.register_kernel("oft::rotation_blocks_backward", "cpu", rotation_blocks_backward)
