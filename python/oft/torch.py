"""PyTorch ops and modules over oft's kernels.

Two differentiable ops, the torch library ops of ``oft._ops`` (schema, fake function and autograd
defined there once; kernels per device in ``oft.backends``), so ``torch.compile`` sees each as one
opaque node and never traces into it; ``torch.autograd.gradcheck`` passes in double:

- ``rotate(x, theta, block_size, ...)``: ``Y = X R`` over the last dimension of ``x`` (any leading
  shape), with the analytic backward: ``dX = dY R^T`` and ``dtheta``, from one fused pass over X
  and dY, with nothing saved but X and theta (R is rebuilt from theta in the backward, which costs
  ``O(r b^3)``, nothing next to the ``O(N d b)`` of the pass).
- ``rotation_blocks(theta, block_size, ...)``: ``theta -> [R_1, ..., R_g]`` as a ``[g, b, b]``
  tensor, with the policy's exact vector-Jacobian product.

And ``OFTRotation``, an ``nn.Module`` holding PEFT's parameter (``weight``, ``[r, b(b-1)/2]``, or
``[1, ...]`` when the blocks share one generator), and ``OFTConv``, oft's merge-exact convolution
OFT over a frozen ``nn.Conv1d``/``Conv2d``/``Conv3d`` (docs/conventions.md section 14).
LyCORIS's own modules, trainable on these ops, are in ``oft.lycoris``.

The other families, in PEFT's parameters (CPU, float32 and float64): ``butterfly_rotate`` and
``ButterflyLinear`` (BOFT, ``boft_R`` ``[m, N, b, b]``, ``boft_s``), ``householder_rotate`` and
``HouseholderLinear`` (HRA, ``hra_u`` ``[d, r]``, ``apply_GS``).

Orientation (SPEC section 2, PEFT's): for block i the slice ``X_i`` becomes ``X_i R_i``.
Policies: ``"peft_neumann"`` (PEFT's ``num_cayley_neumann_terms = T``, any T), ``"cayley_neumann"``
(oft's ``R_k``), ``"cayley"`` (exact; note that PEFT's *exact branch* is ``R(-Q)``, see
``oft.peft``), ``"tolerance"`` (fewest terms meeting ``tol``) and ``"exponential"``.
Second derivatives (double backward) are not provided: ``rotate``'s backward is not itself
differentiable and says so if asked.

Dtypes on the CPU: float32 and float64, and bfloat16 activations (``x`` in bfloat16, ``theta`` in
bfloat16 or float32): R, the accumulation and ``dtheta`` are computed in float32, ``y`` and ``dx``
rounded to bfloat16 once, and ``dtheta`` returned in ``theta``'s dtype (as on CUDA). How the
bfloat16 products are computed: ``set_bf16_arithmetic`` (docs/bf16.md).
"""
from __future__ import annotations

import math

import torch

from . import _core, _ops
from .backends import cpu as _cpu

__all__ = ["rotate", "rotation_blocks", "OFTRotation", "POLICIES", "BF16_ARITHMETICS",
           "set_bf16_arithmetic", "get_bf16_arithmetic", "butterfly_rotate", "householder_rotate",
           "ButterflyLinear", "HouseholderLinear", "OFTConv"]

POLICIES = _ops.PARAMETERIZATIONS
BF16_ARITHMETICS = _cpu.BF16_ARITHMETICS
_FLOAT_TYPES = (torch.float32, torch.float64)
_CPU_TYPES = (torch.float32, torch.float64, torch.bfloat16)
_CUDA_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def set_bf16_arithmetic(arithmetic: str) -> None:
    """How the CPU computes with bfloat16 activations, from now on (process-wide).

    ``"float"``: widen to float32, run the float32 kernels, round once; ``y`` and ``dx`` are the
    float32 path's results rounded to bfloat16, bit for bit. ``"dot_product"`` (the default where
    the build has AVX512_BF16): ``vdpbf16ps`` on bfloat16 pairs, about 1.6x faster, within the
    error bound of docs/bf16.md. Raises ``ValueError`` for another name, or for
    ``"dot_product"`` in a build without AVX512_BF16 (``oft._core.has_bf16_dot_product``).
    CUDA tensors are not affected.
    """
    if arithmetic not in BF16_ARITHMETICS:
        raise ValueError(f"oft.torch.set_bf16_arithmetic: {arithmetic!r} is not one of "
                         f"{', '.join(map(repr, BF16_ARITHMETICS))}")
    if arithmetic == "dot_product" and not _core.has_bf16_dot_product:
        raise ValueError("oft.torch.set_bf16_arithmetic: 'dot_product' needs oft._core built with "
                         "AVX512_BF16 (on a CPU that has it, with the default OFT_PYTHON_MARCH="
                         "native); this build has 'float' only")
    _cpu.bf16_arithmetic = arithmetic


def get_bf16_arithmetic() -> str:
    """The CPU's bfloat16 arithmetic now: ``"float"`` or ``"dot_product"``."""
    return _cpu.bf16_arithmetic


def _check_inputs(where: str, x: torch.Tensor, theta: torch.Tensor, block_size: int,
                  shared: bool) -> None:
    """Python-level checks with the names a user knows (the C++ side checks again)."""
    for name, t in (("x", x), ("theta", theta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type == "cuda" and _core.has_cuda:
            if t.dtype not in _CUDA_TYPES:
                raise TypeError(f"{where}: {name} {list(t.shape)} is {t.dtype}; oft's CUDA kernels "
                                "take float32, float64, float16 or bfloat16")
            continue
        if t.dtype not in _CPU_TYPES:
            raise TypeError(f"{where}: {name} {list(t.shape)} is {t.dtype}; oft's CPU kernels take "
                            "float32, float64 or bfloat16 (cast first, as PEFT does to its "
                            "weight's dtype)")
        if t.device.type != "cpu":
            raise ValueError(f"{where}: {name} {list(t.shape)} is on {t.device}; this build of oft "
                             "runs on the CPU" + (" and CUDA" if _core.has_cuda else
                                                  " only (oft.has_cuda is False)"))
    if x.device != theta.device:
        raise ValueError(f"{where}: x is on {x.device} but theta on {theta.device}")
    half_x_float_theta = x.dtype in (torch.float16, torch.bfloat16) and theta.dtype == torch.float32
    if x.dtype != theta.dtype and not half_x_float_theta:
        raise TypeError(f"{where}: x {list(x.shape)} is {x.dtype} but theta {list(theta.shape)} is "
                        f"{theta.dtype}; both must have one dtype (or float32 theta for 16-bit x)")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{where}: block_size must be a positive int, got {block_size!r}")
    m = block_size * (block_size - 1) // 2
    if x.dim() < 1 or x.shape[-1] % block_size != 0:
        raise ValueError(f"{where}: x {list(x.shape)}: its last dimension is not a multiple of "
                         f"block_size {block_size}")
    r = x.shape[-1] // block_size
    g = 1 if shared else r
    if theta.dim() != 2 or theta.shape[0] != g or theta.shape[1] != m:
        raise ValueError(f"{where}: theta {list(theta.shape)} must be [{g}, {m}] for features "
                         f"{x.shape[-1]}, block_size {block_size}"
                         f"{' shared' if shared else ''} (r = {r}, b(b-1)/2 = {m})")


def _policy_args(policy: str, num_terms: int | None, k: int | None, tol: float | None):
    if policy not in POLICIES:
        raise ValueError(f"oft: unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if policy == "peft_neumann":
        return policy, 5 if num_terms is None else int(num_terms), 0.0
    if policy == "cayley_neumann":
        return policy, 3 if k is None else int(k), 0.0
    if policy == "tolerance":
        return policy, 0, 1e-6 if tol is None else float(tol)
    return policy, 0, 0.0


def rotate(x: torch.Tensor, theta: torch.Tensor, block_size: int, *, shared: bool = False,
           policy: str = "peft_neumann", num_terms: int | None = None, k: int | None = None,
           tol: float | None = None) -> torch.Tensor:
    """``Y = X R(theta)`` over the last dimension of ``x`` (differentiable in x and theta).

    ``theta`` is ``[r, b(b-1)/2]`` (``[1, ...]`` with ``shared``), PEFT's packed order. ``policy``
    and its setting: ``num_terms`` (PEFT's T, default 5), ``k`` (oft's R_k, default 3), ``tol``.
    """
    _check_inputs("oft.torch.rotate", x, theta, block_size, shared)
    kind, terms, tol_value = _policy_args(policy, num_terms, k, tol)
    return _ops.rotate_differentiable(x, theta, block_size, bool(shared), kind, terms, tol_value)


def rotation_blocks(theta: torch.Tensor, block_size: int, *, policy: str = "peft_neumann",
                    num_terms: int | None = None, k: int | None = None,
                    tol: float | None = None) -> torch.Tensor:
    """``[R(theta_1), ..., R(theta_g)]`` as a ``[g, b, b]`` tensor (differentiable in theta).

    A bfloat16 theta is widened, R computed in float32 and returned rounded to bfloat16."""
    if isinstance(theta, torch.Tensor) and theta.dtype == torch.bfloat16:
        return rotation_blocks(theta.float(), block_size, policy=policy, num_terms=num_terms, k=k,
                               tol=tol).to(torch.bfloat16)
    if not isinstance(theta, torch.Tensor) or theta.dtype not in _FLOAT_TYPES:
        raise TypeError("oft.torch.rotation_blocks: theta must be a float32, float64 or bfloat16 "
                        f"tensor, got {getattr(theta, 'dtype', type(theta).__name__)}")
    if theta.device.type != "cpu":
        raise ValueError(f"oft.torch.rotation_blocks: theta is on {theta.device}; CPU only")
    m = block_size * (block_size - 1) // 2
    if theta.dim() != 2 or theta.shape[1] != m:
        raise ValueError(f"oft.torch.rotation_blocks: theta {list(theta.shape)} must be [g, {m}] "
                         f"for block_size {block_size}")
    kind, terms, tol_value = _policy_args(policy, num_terms, k, tol)
    return _ops.rotation_blocks(theta, block_size, kind, terms, tol_value)


class OFTRotation(torch.nn.Module):
    """The rotation of an OFT layer: ``forward(x) = x R`` over the last dimension.

    The parameter is PEFT's: ``weight`` ``[r, b(b-1)/2]`` (``[1, ...]`` with ``block_share``),
    zero at start (``R = I``). ``policy``: see ``oft.torch``; PEFT's default is
    ``policy="peft_neumann", num_terms=5`` (= ``policy="cayley_neumann", k=3``).
    """

    def __init__(self, in_features: int, block_size: int, *, block_share: bool = False,
                 policy: str = "peft_neumann", num_terms: int | None = None, k: int | None = None,
                 tol: float | None = None, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if block_size < 1 or in_features % block_size != 0:
            raise ValueError(f"OFTRotation: in_features {in_features} is not a multiple of "
                             f"block_size {block_size}")
        self.in_features = in_features
        self.block_size = block_size
        self.block_share = block_share
        self.r = in_features // block_size
        self.policy, self.terms, self.tol = _policy_args(policy, num_terms, k, tol)
        rows = 1 if block_share else self.r
        self.weight = torch.nn.Parameter(
            torch.zeros(rows, block_size * (block_size - 1) // 2, dtype=dtype, device=device))

    def _settings(self):
        return dict(policy=self.policy, num_terms=self.terms, k=self.terms, tol=self.tol)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rotate(x, self.weight, self.block_size, shared=self.block_share, **self._settings())

    def rotation_matrices(self) -> torch.Tensor:
        """``[R_1, ..., R_g]`` (``[g, b, b]``), differentiable in ``weight``."""
        return rotation_blocks(self.weight, self.block_size, **self._settings())

    def extra_repr(self) -> str:
        setting = {"peft_neumann": f", num_terms={self.terms}", "cayley_neumann": f", k={self.terms}",
                   "tolerance": f", tol={self.tol}"}.get(self.policy, "")
        return (f"in_features={self.in_features}, block_size={self.block_size}, r={self.r}, "
                f"block_share={self.block_share}, policy={self.policy!r}{setting}")


# --- BOFT and HRA (docs/families.md), in PEFT's parameters --------------------------------------

_FAMILY_POLICIES = ("cayley", "cayley_neumann")


def _check_family_inputs(where: str, x, name: str, param, features: int) -> None:
    """The checks with the names a user knows: tensors, CPU, the dtypes, the feature count."""
    for label, t in (("x", x), (name, param)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {label} must be a torch.Tensor, got {type(t).__name__}")
        allowed = _FLOAT_TYPES + ((torch.bfloat16,) if label == "x" else ())
        if t.dtype not in allowed:
            raise TypeError(f"{where}: {label} {list(t.shape)} is {t.dtype}; oft's BOFT and HRA "
                            "kernels take float32 or float64"
                            + (" (or bfloat16 activations)" if label == "x" else ""))
        if t.device.type != "cpu":
            raise ValueError(f"{where}: {label} {list(t.shape)} is on {t.device}; oft's BOFT and "
                             "HRA kernels run on the CPU")
    # bfloat16 activations run on the float32 operator: the parameter stays float32 (PEFT keeps
    # a bfloat16 model's adapter weights in float32).
    wanted = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    if param.dtype != wanted:
        raise TypeError(f"{where}: x {list(x.shape)} is {x.dtype} but {name} "
                        f"{list(param.shape)} is {param.dtype}; {name} must be {wanted}")
    if x.dim() < 1 or x.shape[-1] != features:
        raise ValueError(f"{where}: x {list(x.shape)}: its last dimension must be {features}, "
                         f"the features of {name} {list(param.shape)}")


def butterfly_rotate(x: torch.Tensor, boft_R: torch.Tensor, *, policy: str = "cayley",
                     k: int | None = None) -> torch.Tensor:
    """``Y = X M`` over the last dimension of ``x``: PEFT's BOFT rotation of a Linear layer's input
    (``x @ boft_rotation``), differentiable in ``x`` and ``boft_R``, never forming d x d.

    ``boft_R`` is PEFT's parameter, ``[m, N, b, b]`` (m butterfly factors of N blocks of b,
    ``d = N b``); each block is the exact Cayley ``(I - S)(I + S)^-1`` of its skew part
    ``S = (A - A^T) / 2``, as PEFT computes it (``policy="cayley"``), or oft's Cayley-Neumann
    ``R_k`` of the same generator (``policy="cayley_neumann"``, ``k`` terms, default 4).
    Its gradient comes back in PEFT's layout (zero on the diagonals, which do not enter S).
    bfloat16 ``x`` takes a float32 ``boft_R``: the arithmetic is float32 and each output is
    rounded to bfloat16 once.
    """
    where = "oft.torch.butterfly_rotate"
    if not isinstance(boft_R, torch.Tensor) or boft_R.dim() != 4 or (
            boft_R.shape[2] != boft_R.shape[3]):
        raise ValueError(f"{where}: boft_R must be a [m, N, b, b] tensor, got "
                         f"{list(getattr(boft_R, 'shape', [])) or type(boft_R).__name__}")
    if policy not in _FAMILY_POLICIES:
        raise ValueError(f"{where}: policy {policy!r} is not one of {', '.join(_FAMILY_POLICIES)}")
    m, n, b, _ = boft_R.shape
    _check_family_inputs(where, x, "boft_R", boft_R, n * b)
    terms = 0 if policy == "cayley" else (4 if k is None else int(k))
    return _ops.ButterflyRotate.apply(x, boft_R, policy, terms)


def householder_rotate(x: torch.Tensor, hra_u: torch.Tensor, *,
                       apply_GS: bool = False) -> torch.Tensor:
    """``Y = X R_H^T`` over the last dimension of ``x``: PEFT's HRA Linear layer is
    ``Y W0^T + bias`` (its merged weight ``W0 R_H``), differentiable in ``x`` and ``hra_u``.

    ``hra_u`` is PEFT's parameter ``[d, r]``: ``R_H = H_0 ... H_{r-1}``, ``H_i = I - 2 q_i q_i^T``
    with ``q_i`` the normalized column i, or with ``apply_GS`` the columns made orthonormal by
    Gram-Schmidt first (then ``R_H = I - 2 Q Q^T``). Computed in compact WY form, never d x d.
    A zero column (or a zero Gram-Schmidt residual) raises ``ValueError`` (PEFT gives NaN).
    bfloat16 ``x`` takes a float32 ``hra_u``: the arithmetic is float32 and each output is
    rounded to bfloat16 once.
    """
    where = "oft.torch.householder_rotate"
    if not isinstance(hra_u, torch.Tensor) or hra_u.dim() != 2:
        raise ValueError(f"{where}: hra_u must be a [d, r] tensor, got "
                         f"{list(getattr(hra_u, 'shape', [])) or type(hra_u).__name__}")
    d, r = hra_u.shape
    if r < 1 or (apply_GS and r > d):
        raise ValueError(f"{where}: hra_u {list(hra_u.shape)} must have 1 <= r"
                         f"{' <= d (apply_GS)' if apply_GS else ''}")
    _check_family_inputs(where, x, "hra_u", hra_u, d)
    return _ops.HouseholderRotate.apply(x, hra_u, bool(apply_GS))


def _frozen_linear(where: str, base) -> torch.nn.Linear:
    if not isinstance(base, torch.nn.Linear):
        raise TypeError(f"{where}: base must be a torch.nn.Linear, got {type(base).__name__}")
    for p in base.parameters():
        p.requires_grad_(False)
    return base


class ButterflyLinear(torch.nn.Module):
    """BOFT over a frozen ``nn.Linear``, PEFT's layer: ``y = (base(x M) - bias) * s + bias``.

    Parameters as PEFT names them: ``boft_R`` ``[m, N, b, b]`` (zero: M = I) and ``boft_s``
    ``[out_features, 1]`` (ones). ``factors`` is m (PEFT's ``boft_n_butterfly_factor``);
    give ``block_size`` b or ``block_num`` N (``in_features = N b``; with m > 1, b and N even and
    ``2^(m-1)`` dividing N, PEFT's conditions).
    """

    def __init__(self, base: torch.nn.Linear, *, block_size: int | None = None,
                 block_num: int | None = None, factors: int = 1, policy: str = "cayley",
                 k: int | None = None):
        super().__init__()
        where = "ButterflyLinear"
        self.base = _frozen_linear(where, base)
        d = base.in_features
        if (block_size is None) == (block_num is None):
            raise ValueError(f"{where}: give exactly one of block_size and block_num, got "
                             f"block_size={block_size}, block_num={block_num}")
        if block_size is None:
            if block_num < 1 or d % block_num:
                raise ValueError(f"{where}: in_features {d} is not a multiple of block_num "
                                 f"{block_num}")
            block_size = d // block_num
        if block_size < 1 or d % block_size:
            raise ValueError(f"{where}: in_features {d} is not a multiple of block_size "
                             f"{block_size}")
        n = d // block_size
        if factors < 1:
            raise ValueError(f"{where}: factors must be >= 1, got {factors}")
        if factors > 1 and (block_size % 2 or n % 2 or n % (1 << (factors - 1))):
            raise ValueError(f"{where}: factors {factors} needs block_size and block_num even and "
                             f"block_num a multiple of 2^(factors-1) = {1 << (factors - 1)}; got "
                             f"block_size {block_size}, block_num {n} (in_features {d})")
        if policy not in _FAMILY_POLICIES:
            raise ValueError(f"{where}: policy {policy!r} is not one of "
                             f"{', '.join(_FAMILY_POLICIES)}")
        self.policy, self.k = policy, k
        w = base.weight
        self.boft_R = torch.nn.Parameter(torch.zeros(factors, n, block_size, block_size,
                                                     dtype=w.dtype, device=w.device))
        self.boft_s = torch.nn.Parameter(torch.ones(base.out_features, 1, dtype=w.dtype,
                                                    device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(butterfly_rotate(x, self.boft_R, policy=self.policy, k=self.k))
        bias = self.base.bias
        if bias is None:
            return y * self.boft_s.squeeze(-1)
        return (y - bias) * self.boft_s.squeeze(-1) + bias

    def extra_repr(self) -> str:
        m, n, b, _ = self.boft_R.shape
        return f"factors={m}, block_num={n}, block_size={b}, policy={self.policy!r}"


class HouseholderLinear(torch.nn.Module):
    """HRA over a frozen ``nn.Linear``, PEFT's layer: ``y = base(x R_H^T)`` (weight ``W0 R_H``).

    The parameter as PEFT names it: ``hra_u`` ``[in_features, r]``, initialized PEFT's way for an
    even r (kaiming-uniform columns, each repeated once, so the reflections cancel: R_H = I); an
    odd r starts from kaiming-uniform columns (R_H != I), as PEFT does with a warning.
    """

    def __init__(self, base: torch.nn.Linear, r: int, *, apply_GS: bool = False):
        super().__init__()
        where = "HouseholderLinear"
        self.base = _frozen_linear(where, base)
        d = base.in_features
        if r < 1 or (apply_GS and r > d):
            raise ValueError(f"{where}: r must be in [1, in_features = {d}], got r={r}")
        self.apply_GS = bool(apply_GS)
        w = base.weight
        if r % 2 == 0:
            half = torch.empty(d, r // 2, dtype=w.dtype, device=w.device)
            torch.nn.init.kaiming_uniform_(half, a=math.sqrt(5))
            u = torch.repeat_interleave(half, 2, dim=1)
        else:
            u = torch.empty(d, r, dtype=w.dtype, device=w.device)
            torch.nn.init.kaiming_uniform_(u, a=math.sqrt(5))
        self.hra_u = torch.nn.Parameter(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(householder_rotate(x, self.hra_u, apply_GS=self.apply_GS))

    def extra_repr(self) -> str:
        return f"r={self.hra_u.shape[1]}, apply_GS={self.apply_GS}"


# --- Convolutions (docs/conventions.md section 14) ----------------------------------------------

_CONV_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _check_base(where: str, base, types: tuple, kinds: str) -> torch.Tensor:
    """The layer an adapter wraps: one of ``types`` (named ``kinds`` in the message) with a
    weight oft's kernels take; returns the weight. Freezing is the caller's, after its own
    checks, so that a refused adapter leaves the user's layer as it was."""
    if not isinstance(base, types):
        raise TypeError(f"{where}: base must be a torch.nn.{kinds}, got {type(base).__name__}")
    w = base.weight
    if w.dtype not in _CPU_TYPES:
        raise TypeError(f"{where}: the base's weight {list(w.shape)} is {w.dtype}; oft's "
                        "kernels take float32, float64 or bfloat16")
    return w


class OFTConv(torch.nn.Module):
    """oft's convolution OFT over a frozen ``nn.Conv1d``, ``Conv2d`` or ``Conv3d``.

    Definition (docs/conventions.md section 14, ``oft::conv`` in C++): every patch that the
    convolution cuts out of its input, ``p`` of ``K = (C / groups) * prod(kernel_size)`` values in
    PyTorch's weight order ``(c, i, j)``, is rotated, ``p -> p R``, before the base's weights meet
    it; ``R`` is the block-diagonal rotation of ``OFTRotation`` (``b`` divides ``K``). With
    ``groups > 1`` the same ``R`` rotates each group's patch. This is exactly the convolution
    with the merged weight ``W'_flat = W_flat R^T`` (``W_flat`` the weight as ``[O, K]``), for
    every input size, padding, stride, dilation, group count and kernel shape, so the forward
    computes it that way: ``R^T`` is ``R`` of the negated generators for every policy (each is a
    function of ``Q`` that commutes with transposition), the ``O`` kernel rows are rotated
    (``2 O K b`` flops) and the base's own convolution runs with ``W'``; autograd carries the
    gradient to ``weight`` through the rotation op. ``merge()`` returns the plain convolution.

    The parameter is ``OFTRotation``'s (``weight`` ``[K / b, b(b-1)/2]``, zero: the base's
    output), with its ``policy`` settings; the base's parameters are frozen.
    """

    def __init__(self, base: torch.nn.Module, block_size: int, *, block_share: bool = False,
                 policy: str = "peft_neumann", num_terms: int | None = None, k: int | None = None,
                 tol: float | None = None):
        super().__init__()
        where = "OFTConv"
        # ConvTranspose*d are not subclasses of these.
        w = _check_base(where, base, _CONV_TYPES, "Conv1d, Conv2d or Conv3d")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"{where}: block_size must be a positive int, got {block_size!r}")
        patch = w[0].numel()
        if patch % block_size != 0:
            kernel = "*".join(str(n) for n in base.kernel_size)
            raise ValueError(f"{where}: block_size {block_size} does not divide the patch length "
                             f"K = (in_channels / groups) * kernel = {w.shape[1]}*{kernel} = "
                             f"{patch} of {type(base).__name__}{tuple(w.shape)}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.patch_features = patch
        # float32 generators for a bfloat16 base, as PEFT keeps its adapter weights.
        theta_dtype = torch.float32 if w.dtype == torch.bfloat16 else w.dtype
        self.rotation = OFTRotation(patch, block_size, block_share=block_share, policy=policy,
                                    num_terms=num_terms, k=k, tol=tol, dtype=theta_dtype,
                                    device=w.device)

    @property
    def weight(self) -> torch.nn.Parameter:
        """The generators (``OFTRotation.weight``): ``[K / b, b(b-1)/2]``, or ``[1, ...]``."""
        return self.rotation.weight

    def merged_weight(self) -> torch.Tensor:
        """``W'`` (the base's weight shape): ``W_flat R^T``, differentiable in ``weight``."""
        rot = self.rotation
        w = self.base.weight
        flat = w.reshape(w.shape[0], self.patch_features)
        merged = rotate(flat, -rot.weight, rot.block_size, shared=rot.block_share,
                        **rot._settings())
        return merged.reshape(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._conv_forward(x, self.merged_weight(), self.base.bias)

    @torch.no_grad()
    def merge(self) -> torch.nn.Module:
        """A copy of the base convolution with the merged weight (the same map as this layer)."""
        import copy
        merged = copy.deepcopy(self.base)
        merged.weight.copy_(self.merged_weight())
        return merged

    def extra_repr(self) -> str:
        return f"patch_features={self.patch_features}"

