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
- ``strength`` s: the loader's linear blend ``W + s (W' - W)``.

Computed on the weight side with ``oft.torch.rotate`` (``policy="peft_neumann", num_terms=5``;
``R^T`` is the series of ``-Q``), so autograd carries the gradient to ``oft_R.weight``. The
``clipped_oft`` and ``cans_oft`` flags are not provided: the loader's clip draws new random power
-iteration vectors on every load (no single map to train) and CANS is no Neumann series.
"""
from __future__ import annotations

import math

import torch

from .torch import _CONV_TYPES, OFTRotation, _check_base, rotate

__all__ = ["OFT"]

_BASES = (torch.nn.Linear,) + _CONV_TYPES


class OFT(torch.nn.Module):
    """OneTrainer's OFT module over a frozen ``base`` (see the module doc)."""

    def __init__(self, base: torch.nn.Module, block_size: int, *, scaled: bool = False,
                 block_share: bool = False, strength: float = 1.0):
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
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.scaled = bool(scaled)
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

    def merged_weight(self) -> torch.Tensor:
        """``W'`` (the base's weight shape) at this module's strength, differentiable."""
        w = self.base.weight
        flat = w.reshape(w.shape[0], -1)
        theta = self.generators()
        # Linear: W R^T (the series of -Q); convolutions: W_flat R.
        signed = -theta if isinstance(self.base, torch.nn.Linear) else theta
        rotated = rotate(flat, signed, self.oft_R.block_size, shared=self.oft_R.block_share,
                         policy="peft_neumann", num_terms=5)
        s = self.strength
        merged = rotated if s == 1.0 else flat + s * (rotated - flat)
        return merged.reshape(w.shape).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if isinstance(base, torch.nn.Linear):
            return torch.nn.functional.linear(x, self.merged_weight(), base.bias)
        return base._conv_forward(x, self.merged_weight(), base.bias)

    def adapter_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors under OneTrainer's names: ``<prefix>.oft_R.weight`` and, when scaled,
        ``<prefix>.oft_R.scaled_oft`` (a boolean scalar, present = on), detached."""
        head = f"{prefix}." if prefix else ""
        tensors = {f"{head}oft_R.weight": self.oft_R.weight.detach()}
        if self.scaled:
            tensors[f"{head}oft_R.scaled_oft"] = torch.tensor(True)
        return tensors

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}, strength={self.strength}"
