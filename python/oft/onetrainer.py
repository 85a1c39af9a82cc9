"""OneTrainer's "OFT v2" module, trainable, on oft's kernels (docs/dialects.md section 4).

``OFT`` is the map that OneTrainer trains and the ComfyUI-OFTv2 loader merges (OneTrainer
``modules/module/oft_utils.py`` and ``LoRAModule.py``, ComfyUI-OFTv2 ``node/oftv2_loader.py``; the
commits are cited in ``tests/dialects/make_onetrainer_fixtures.py``), over a frozen ``nn.Linear``
or ``nn.Conv1d/2d/3d``, with its parameter under its name (``oft_R.weight``, PEFT's packed
``[r, b(b-1)/2]``; ``[1, ...]`` with ``block_share``) and the ``scaled_oft`` flag:

- ``R`` per block is the Cayley-Neumann series with 5 terms (PEFT's ``num_cayley_neumann_terms =
  5``) of ``Q = skew(theta)``, or of ``Q / (2 sqrt(b - 1))`` with ``scaled``;
- Linear: ``W' = W R^T`` per block of input features (the input rotated, ``x R``, then the layer);
  convolutions: ``W'_flat = W_flat R`` over the flattened ``C kh kw`` input of the kernel (``R``,
  not ``R^T``: oft's own convolution OFT with the generators negated);
- ``strength`` s: the loader's linear blend ``W + s (W' - W)``;
- ``cans=True`` (``cans_oft``): ``R`` the square of 7 Chebyshev-optimized Newton-Schulz steps
  on ``G = I + Q`` (the loader's order; ``cans_order="square_first"`` runs them on ``(I + Q)^2``,
  as OneTrainer's trainer does since its commit 7d415a4: another map), with ``||G||_inf``
  detached in the gradient as OneTrainer's autograd has it (``include/oft/onetrainer.hpp``).

Without CANS computed on the weight side with ``oft.torch.rotate`` (``policy="peft_neumann",
num_terms=5``; ``R^T`` is the series of ``-Q``); with CANS the ``b x b`` blocks are built by
torch and applied by one batched product. Autograd carries the gradient to ``oft_R.weight``. The
``clipped_oft`` flag is not provided: the loader's clip draws new random power-iteration vectors
on every load, so a binding clip has no single map to train.
"""
from __future__ import annotations

import math

import torch

from .torch import _CONV_TYPES, OFTRotation, _check_base, rotate, rotation_blocks

__all__ = ["OFT"]

_BASES = (torch.nn.Linear,) + _CONV_TYPES
_CANS_STEPS = 7  # the loader's count in float32
_CANS_ORDERS = ("square_after", "square_first")


def _cans_polar(g: torch.Tensor, steps: int = _CANS_STEPS) -> torch.Tensor:
    """The polar factor of each ``g`` block by Chebyshev-optimized Newton-Schulz: ``g`` scaled by
    its max row sum (floored at 1e-7, detached), singular values in ``[lo, hi] = [1/||g||_inf,
    1]``; each step the odd cubic ``c1 X + c3 X X^T X`` optimal for that interval, which maps it
    to ``[1 - e, 1 + e]``."""
    scale = g.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True).clamp_min(1e-7).detach()
    x = g / scale
    lo, hi = 1.0 / scale, torch.ones_like(scale)
    for _ in range(steps):
        mean_square = (lo * lo + lo * hi + hi * hi) / 3.0
        top, bottom = 2.0 * mean_square ** 1.5, lo * hi * (lo + hi)
        c1 = 6.0 * mean_square / (top + bottom)
        x = c1 * x - (c1 / (3.0 * mean_square)) * (x @ x.transpose(-1, -2) @ x)
        spread = (top - bottom) / (top + bottom)
        lo, hi = 1.0 - spread, 1.0 + spread
    return x


class OFT(torch.nn.Module):
    """OneTrainer's OFT module over a frozen ``base`` (see the module doc)."""

    def __init__(self, base: torch.nn.Module, block_size: int, *, scaled: bool = False,
                 block_share: bool = False, strength: float = 1.0, cans: bool = False,
                 cans_order: str = "square_after"):
        super().__init__()
        where = "oft.onetrainer.OFT"
        w = _check_base(where, base, _BASES, "Linear, Conv1d, Conv2d or Conv3d")
        features = w[0].numel()
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1 \
                or features % block_size:
            raise ValueError(f"{where}: block_size {block_size!r} must be a positive int dividing "
                             f"the {features} input features of {type(base).__name__}"
                             f"{tuple(w.shape)}")
        if scaled and block_size < 2:
            raise ValueError(f"{where}: scaled_oft divides Q by 2 sqrt(b - 1): block_size must be "
                             f">= 2, got {block_size}")
        if cans_order not in _CANS_ORDERS:
            raise ValueError(f"{where}: cans_order must be one of {', '.join(_CANS_ORDERS)}, got "
                             f"{cans_order!r}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.scaled = bool(scaled)
        self.cans = bool(cans)
        self.cans_order = cans_order
        self.strength = float(strength)
        dtype = torch.float32 if w.dtype == torch.bfloat16 else w.dtype
        self.oft_R = OFTRotation(features, block_size, block_share=block_share,
                                 policy="peft_neumann", num_terms=5, dtype=dtype, device=w.device)

    def generators(self) -> torch.Tensor:
        """The generators of the series: ``oft_R.weight``, divided by ``2 sqrt(b - 1)`` when
        scaled."""
        theta = self.oft_R.weight
        if self.scaled:
            theta = theta / (2.0 * math.sqrt(self.oft_R.block_size - 1))
        return theta

    def rotations(self) -> torch.Tensor:
        """``R`` per stored block (``[r, b, b]``, ``[1, b, b]`` shared) as the loader builds it,
        differentiable."""
        theta, b = self.generators(), self.oft_R.block_size
        if not self.cans:
            return rotation_blocks(theta, b, policy="peft_neumann", num_terms=5)
        rows, cols = torch.triu_indices(b, b, 1, device=theta.device)
        upper = theta.new_zeros(theta.shape[0], b, b)
        upper[:, rows, cols] = theta
        g = torch.eye(b, dtype=theta.dtype, device=theta.device) + upper - upper.transpose(1, 2)
        if self.cans_order == "square_first":
            return _cans_polar(g @ g)
        half = _cans_polar(g)
        return half @ half

    def merged_weight(self) -> torch.Tensor:
        """``W'`` (the base's weight shape) at this module's strength, differentiable."""
        w = self.base.weight
        flat = w.reshape(w.shape[0], -1)
        linear = isinstance(self.base, torch.nn.Linear)
        b = self.oft_R.block_size
        if self.cans:
            r = self.rotations().to(flat.dtype)
            r = r.expand(flat.shape[1] // b, b, b)
            # Linear: W R^T per block of columns; convolutions: W_flat R.
            blocks = flat.reshape(flat.shape[0], -1, b).transpose(0, 1)  # [n, out, b]
            rotated = (blocks @ (r.transpose(1, 2) if linear else r)).transpose(0, 1)
            rotated = rotated.reshape(flat.shape)
        else:
            theta = self.generators()
            # Linear: W R^T (the series of -Q); convolutions: W_flat R.
            rotated = rotate(flat, -theta if linear else theta, b,
                             shared=self.oft_R.block_share, policy="peft_neumann", num_terms=5)
        s = self.strength
        merged = rotated if s == 1.0 else flat + s * (rotated - flat)
        return merged.reshape(w.shape).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if isinstance(base, torch.nn.Linear):
            return torch.nn.functional.linear(x, self.merged_weight(), base.bias)
        return base._conv_forward(x, self.merged_weight(), base.bias)

    @classmethod
    def from_adapter(cls, base: torch.nn.Module, tensors, prefix: str, **options) -> "OFT":
        """The module over ``base`` holding OneTrainer module ``prefix`` of a file's ``tensors``:
        ``<prefix>.oft_R.weight`` ``[r, b(b-1)/2]`` gives ``b`` (and ``block_share`` when
        ``r = 1`` for several blocks), ``.oft_R.scaled_oft`` and ``.oft_R.cans_oft`` the flags
        (a boolean scalar; absent = off); ``options``: ``strength``, ``cans_order``. Raises
        ValueError naming the tensor for a missing or misshaped one, ``clipped_oft`` (no
        single map, see the module doc) or a tensor that is not this module's."""
        where = "oft.onetrainer.OFT.from_adapter"
        head = f"{prefix}.oft_R."
        known = {"weight", "scaled_oft", "cans_oft", "clipped_oft"}
        extra = sorted(k for k in tensors if k.startswith(f"{prefix}.") and
                       not (k.startswith(head) and k[len(head):] in known))
        if extra:
            raise ValueError(f"{where}: {', '.join(extra)} belong to no OneTrainer OFT module")
        if head + "clipped_oft" in tensors:
            raise ValueError(f"{where}: '{head}clipped_oft': the loader clips by a power "
                             "iteration from a new random start on every load, so the module "
                             "has no single map to train or run")
        if head + "weight" not in tensors:
            raise ValueError(f"{where}: no tensor '{head}weight'")
        weight = tensors[head + "weight"]
        packed = int(weight.shape[-1]) if weight.dim() == 2 else -1
        b = (1 + math.isqrt(1 + 8 * packed)) // 2 if packed >= 0 else 0
        if packed < 0 or b * (b - 1) // 2 != packed:
            raise ValueError(f"{where}: '{head}weight' is {list(weight.shape)}, not [r, b(b-1)/2]")
        features = base.weight[0].numel() if isinstance(base, _BASES) else 0
        if isinstance(base, _BASES) and features % b:
            raise ValueError(f"{where}: '{head}weight' has blocks of b = {b}, which does not "
                             f"divide the {features} input features of {type(base).__name__}"
                             f"{tuple(base.weight.shape)}")
        shared = weight.shape[0] == 1 and features > b

        def flag(name):
            value = tensors.get(head + name)
            return value is not None and bool(value)

        module = cls(base, b, scaled=flag("scaled_oft"), block_share=shared, cans=flag("cans_oft"),
                     **options)
        if tuple(weight.shape) != tuple(module.oft_R.weight.shape):
            raise ValueError(f"{where}: '{head}weight' is {list(weight.shape)}, but "
                             f"{type(base).__name__}{tuple(base.weight.shape)} with b = {b} needs "
                             f"{list(module.oft_R.weight.shape)}")
        with torch.no_grad():
            module.oft_R.weight.copy_(weight)
        return module

    def adapter_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors under OneTrainer's names: ``<prefix>.oft_R.weight`` and the flags that are
        on, ``<prefix>.oft_R.scaled_oft`` and ``.cans_oft`` (boolean scalars), detached."""
        head = f"{prefix}." if prefix else ""
        tensors = {f"{head}oft_R.weight": self.oft_R.weight.detach()}
        if self.scaled:
            tensors[f"{head}oft_R.scaled_oft"] = torch.tensor(True)
        if self.cans:
            tensors[f"{head}oft_R.cans_oft"] = torch.tensor(True)
        return tensors

    def extra_repr(self) -> str:
        cans = f", cans={self.cans_order!r}" if self.cans else ""
        return f"scaled={self.scaled}, strength={self.strength}{cans}"
