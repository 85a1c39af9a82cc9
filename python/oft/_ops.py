"""oft's torch ops, each defined once: schema, fake (meta) function and autograd.

The kernels, one per device, are registered by ``oft.backends.cpu`` and ``oft.backends.cuda``
(imported at the end of this module; the CUDA one only when ``oft._core`` has CUDA). The
parameterization and the dtype are mapped to ``oft._core`` objects here, once, for both:

- ``oft::rotate(x, theta, block_size, shared, parameterization, terms, tol) -> y``
- ``oft::rotate_backward(x, theta, dy, ..., want_dx, want_dtheta) -> (dx, dtheta)``
- ``oft::rotation_blocks(theta, block_size, parameterization, terms, tol) -> [g, b, b]``
- ``oft::rotation_blocks_backward(theta, grad, block_size, parameterization, terms, tol)``

``parameterization`` is one of ``PARAMETERIZATIONS``; ``terms`` is PEFT's T for
``"peft_neumann"`` and oft's k for ``"cayley_neumann"``; ``tol`` is for ``"tolerance"``.
"""
from __future__ import annotations

import functools

import torch

from . import _core, dtype_name

PARAMETERIZATIONS = ("peft_neumann", "cayley_neumann", "cayley", "tolerance", "exponential")


@functools.lru_cache(maxsize=None)
def parameterization(kind: str, terms: int, tol: float) -> _core.Parameterization:
    """The ``oft._core.Parameterization`` of the ops' (parameterization, terms, tol)."""
    if kind == "peft_neumann":
        return _core.Parameterization.peft_neumann(terms)
    if kind == "cayley_neumann":
        return _core.Parameterization.cayley_neumann(terms)
    if kind == "cayley":
        return _core.Parameterization.cayley()
    if kind == "tolerance":
        return _core.Parameterization.tolerance(tol)
    if kind == "exponential":
        return _core.Parameterization.exponential()
    raise ValueError(f"oft: unknown policy {kind!r}; expected one of {', '.join(PARAMETERIZATIONS)}")


@functools.lru_cache(maxsize=None)
def kernel_dtype(dtype: torch.dtype) -> str:
    """The ``oft._core`` dtype name of activations of ``dtype``."""
    return dtype_name(dtype)


def is_constant(kind: str, terms: int) -> bool:
    """Whether R does not depend on theta: PEFT's Neumann branch with T <= 1 computes R = I."""
    return kind == "peft_neumann" and terms <= 1


def kernel_theta(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """theta as the kernels take it: float64 for float64 x, else float32; contiguous."""
    wanted = torch.float64 if x.dtype == torch.float64 else torch.float32
    return theta.detach().to(wanted).contiguous()


def rows(x: torch.Tensor) -> torch.Tensor:
    """x as [N, d] without a copy where the kernels can take its layout (unit column stride and
    a row stride >= d); otherwise a contiguous copy (e.g. rows of stride 0 from ``expand``)."""
    x2 = x.detach()
    if x2.dim() != 2:
        x2 = x2.reshape(-1, x2.shape[-1])
    n, d = x2.shape
    if n > 0 and ((d > 1 and x2.stride(1) != 1) or (n > 1 and x2.stride(0) < d)):
        x2 = x2.contiguous()
    return x2


torch.library.define(
    "oft::rotate",
    "(Tensor x, Tensor theta, int block_size, bool shared, str parameterization, int terms, "
    "float tol) -> Tensor")
torch.library.define(
    "oft::rotate_backward",
    "(Tensor x, Tensor theta, Tensor dy, int block_size, bool shared, str parameterization, "
    "int terms, float tol, bool want_dx, bool want_dtheta) -> (Tensor, Tensor)")
torch.library.define(
    "oft::rotation_blocks",
    "(Tensor theta, int block_size, str parameterization, int terms, float tol) -> Tensor")
torch.library.define(
    "oft::rotation_blocks_backward",
    "(Tensor theta, Tensor grad, int block_size, str parameterization, int terms, float tol) "
    "-> Tensor")

rotate = torch.ops.oft.rotate.default
rotate_backward = torch.ops.oft.rotate_backward.default
rotation_blocks = torch.ops.oft.rotation_blocks.default
rotation_blocks_backward = torch.ops.oft.rotation_blocks_backward.default


@torch.library.register_fake("oft::rotate")
def _(x, theta, block_size, shared, parameterization, terms, tol):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("oft::rotate_backward")
def _(x, theta, dy, block_size, shared, parameterization, terms, tol, want_dx, want_dtheta):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if want_dx else x.new_empty(0)
    dtheta = torch.empty_like(theta) if want_dtheta else x.new_empty(0)
    return dx, dtheta


@torch.library.register_fake("oft::rotation_blocks")
def _(theta, block_size, parameterization, terms, tol):
    return theta.new_empty((theta.shape[0], block_size, block_size))


@torch.library.register_fake("oft::rotation_blocks_backward")
def _(theta, grad, block_size, parameterization, terms, tol):
    return torch.empty_like(theta)


def _rotate_setup(ctx, inputs, output):
    x, theta, block_size, shared, kind, terms, tol = inputs
    ctx.save_for_backward(x, theta)
    ctx.args = (block_size, shared, kind, terms, tol)


def _gradients(backward, x, theta, dy, args, needs_input_grad):
    """(dx, dtheta) of oft::rotate, None where not wanted, through ``backward`` (the op, or the
    device's kernel)."""
    block_size, shared, kind, terms, tol = args
    want_dx = needs_input_grad[0]
    # A constant R (PEFT's T <= 1) has no gradient: theta's stays None, as PEFT's does.
    want_dtheta = needs_input_grad[1] and not is_constant(kind, terms)
    if not (want_dx or want_dtheta):
        return None, None
    dx, dtheta = backward(x, theta, dy, block_size, shared, kind, terms, tol, want_dx, want_dtheta)
    return (dx if want_dx else None), (dtheta if want_dtheta else None)


def _rotate_backward(ctx, dy):
    x, theta = ctx.saved_tensors
    dx, dtheta = _gradients(rotate_backward, x, theta, dy, ctx.args, ctx.needs_input_grad)
    return dx, dtheta, None, None, None, None, None


torch.library.register_autograd("oft::rotate", _rotate_backward, setup_context=_rotate_setup)


_EAGER_KERNELS = {}  # device type -> (rotate, rotate_backward), filled by the backends
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class _Rotate(torch.autograd.Function):
    """oft::rotate's autograd (what it saves and ``_gradients``, as registered above) for plain
    eager calls, straight to the device's kernels, past torch's dispatcher into a Python kernel
    and torch.library's autograd wrapper (together about 80 us a forward + backward at d = 384,
    N = 112 here). The results are the ops' own."""

    @staticmethod
    def forward(ctx, x, theta, args):
        ctx.save_for_backward(x, theta)
        ctx.args = args
        return _EAGER_KERNELS[x.device.type][0](x, theta, *args)

    @staticmethod
    def backward(ctx, dy):
        x, theta = ctx.saved_tensors
        dx, dtheta = _gradients(_EAGER_KERNELS[x.device.type][1], x, theta, dy, ctx.args,
                                ctx.needs_input_grad)
        return dx, dtheta, None


def rotate_differentiable(x, theta, block_size, shared, kind, terms, tol):
    """``oft::rotate`` with its gradient. Plain tensors in eager mode go through ``_Rotate``
    (the device's kernels directly); anything else (``torch.compile``, fake tensors, tensor
    subclasses, torch function or dispatch modes) through the op and its registered autograd,
    which ``torch.compile`` keeps as one opaque node."""
    if (type(x) in _PLAIN and type(theta) in _PLAIN and x.device.type in _EAGER_KERNELS
            and not torch.compiler.is_compiling()
            and not torch._C._is_torch_function_mode_enabled()
            and torch._C._len_torch_dispatch_stack() == 0):
        return _Rotate.apply(x, theta, (block_size, shared, kind, terms, tol))
    return rotate(x, theta, block_size, shared, kind, terms, tol)


def _blocks_setup(ctx, inputs, output):
    theta, block_size, kind, terms, tol = inputs
    ctx.save_for_backward(theta)
    ctx.args = (block_size, kind, terms, tol)


def _blocks_backward(ctx, grad):
    (theta,) = ctx.saved_tensors
    return rotation_blocks_backward(theta, grad, *ctx.args), None, None, None, None


torch.library.register_autograd("oft::rotation_blocks", _blocks_backward,
                                setup_context=_blocks_setup)

from .backends import cpu as _cpu  # noqa: E402,F401  (registers the CPU kernels)

if _core.has_cuda:
    from .backends import cuda as _cuda  # noqa: E402,F401  (registers the CUDA kernels)


# --- The other orthogonal families: BOFT's butterfly and HRA's Householder reflections --------
#
# Autograd functions over ``oft._core.Butterfly`` / ``oft._core.Householder`` that take PEFT's
# own parameters (``boft_R`` [m, N, b, b], ``hra_u`` [d, r]) and return their gradients, so a
# PEFT layer's parameters get theirs directly. One operator per thread and shape: layers of one
# shape share it and its backward workspace (one workspace, not one per layer); the backward
# re-sets the parameter only when another tensor or version was set since its forward (the
# O(m N b^3) or O(d r^2) set-up, small next to the O(N d b m) or O(N d r) pass).

import threading as _threading  # noqa: E402

from .backends import OperatorCache as _OperatorCache  # noqa: E402

_family_local = _threading.local()
FAMILY_CACHE_SIZE = 64


class _FamilyEntry:
    __slots__ = ("op", "param", "version")

    def __init__(self, op):
        self.op, self.param, self.version = op, None, -1


def _family_entry(key, make) -> _FamilyEntry:
    cache = getattr(_family_local, "operators", None)
    if cache is None:
        cache = _family_local.operators = _OperatorCache(FAMILY_CACHE_SIZE)
    return cache.get(key, lambda: _FamilyEntry(make()))


def _family_set(entry: _FamilyEntry, param: torch.Tensor, setter, forward: bool) -> None:
    """Sets the operator from ``param`` unless (in a backward) it already holds this version of
    this memory: the saved tensor is alive, so no other tensor can have taken its memory."""
    ident = (param.data_ptr(), tuple(param.shape), param.stride(), param.dtype)
    fresh = (not forward and entry.param == ident and entry.version >= 0
             and not param.is_inference() and entry.version == param._version)
    if not fresh:
        setter(param)
        entry.param, entry.version = ident, -1 if param.is_inference() else param._version


def butterfly_operator(features: int, block_size: int, factors: int, kind: str, terms: int,
                       dtype: torch.dtype):
    key = ("butterfly", features, block_size, factors, kind, terms, dtype)
    return _family_entry(key, lambda: _core.Butterfly(features, block_size, factors,
                                                      parameterization(kind, terms, 0.0),
                                                      kernel_dtype(dtype)))


def householder_operator(features: int, reflections: int, gram_schmidt: bool, dtype: torch.dtype):
    key = ("householder", features, reflections, bool(gram_schmidt), dtype)
    return _family_entry(key, lambda: _core.Householder(features, reflections, bool(gram_schmidt),
                                                        kernel_dtype(dtype)))


def _parameter_dtype(x: torch.Tensor) -> torch.dtype:
    """The family kernels' parameter and gradient dtype for activations x: float32 for bfloat16
    activations (the float32 operator takes them), else x's."""
    return torch.float32 if x.dtype == torch.bfloat16 else x.dtype


def _boft_matrix(boft_R: torch.Tensor) -> torch.Tensor:
    m, n, b, _ = boft_R.shape
    return boft_R.detach().contiguous().view(m * n, b * b)


class ButterflyRotate(torch.autograd.Function):
    """``Y = X M(boft_R)`` over the last dimension of x (PEFT's BOFT rotation of the input,
    ``x @ boft_rotation``), with ``dX = dY M^T`` and ``d boft_R`` in PEFT's layout."""

    @staticmethod
    def forward(ctx, x, boft_R, kind, terms):
        m, n, b, _ = boft_R.shape
        entry = butterfly_operator(x.shape[-1], b, m, kind, terms, x.dtype)
        _family_set(entry, boft_R, lambda p: entry.op.set_peft_weight(_boft_matrix(p)), True)
        x2 = rows(x)
        y = torch.empty(x2.shape, dtype=x.dtype)
        entry.op.apply(x2, y)
        ctx.save_for_backward(x, boft_R)
        ctx.args = (kind, terms)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, boft_R = ctx.saved_tensors
        kind, terms = ctx.args
        want_dx, want_dr = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_dx or want_dr):
            return None, None, None, None
        m, n, b, _ = boft_R.shape
        entry = butterfly_operator(x.shape[-1], b, m, kind, terms, x.dtype)
        _family_set(entry, boft_R, lambda p: entry.op.set_peft_weight(_boft_matrix(p)), False)
        x2, dy2 = rows(x), rows(dy)
        dx = torch.empty(x2.shape, dtype=x.dtype) if want_dx else None
        dr = torch.empty((m * n, b * b), dtype=_parameter_dtype(x)) if want_dr else None
        entry.op.backward(x2, dy2, dx, dr)
        return (dx.view(x.shape) if want_dx else None,
                dr.view(m, n, b, b).to(boft_R.dtype) if want_dr else None, None, None)


class HouseholderRotate(torch.autograd.Function):
    """``Y = X R_H^T`` over the last dimension of x (PEFT's HRA layer is ``Y W0^T + bias``), with
    ``dX = dY R_H`` and ``d hra_u`` in PEFT's [d, r] layout."""

    @staticmethod
    def forward(ctx, x, hra_u, gram_schmidt):
        d, r = hra_u.shape
        entry = householder_operator(d, r, gram_schmidt, x.dtype)
        _family_set(entry, hra_u, lambda p: entry.op.set_vectors(p.detach().contiguous()), True)
        x2 = rows(x)
        y = torch.empty(x2.shape, dtype=x.dtype)
        entry.op.apply(x2, y)
        ctx.save_for_backward(x, hra_u)
        ctx.gram_schmidt = gram_schmidt
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, hra_u = ctx.saved_tensors
        want_dx, want_du = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_dx or want_du):
            return None, None, None
        d, r = hra_u.shape
        entry = householder_operator(d, r, ctx.gram_schmidt, x.dtype)
        _family_set(entry, hra_u, lambda p: entry.op.set_vectors(p.detach().contiguous()), False)
        x2, dy2 = rows(x), rows(dy)
        dx = torch.empty(x2.shape, dtype=x.dtype) if want_dx else None
        du = torch.empty((d, r), dtype=_parameter_dtype(x)) if want_du else None
        entry.op.backward(x2, dy2, dx, du)
        return (dx.view(x.shape) if want_dx else None, du if want_du else None, None)
