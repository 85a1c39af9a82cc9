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
``[1, ...]`` when the blocks share one generator).

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
           "set_bf16_arithmetic", "get_bf16_arithmetic"]

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
