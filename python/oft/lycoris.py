"""LyCORIS's OFT modules, trainable, on oft's kernels (docs/dialects.md sections 1 to 3): and
kohya sd-scripts' OFT, LyCORIS's diag-OFT with another constraint rule.

``DiagOFT`` and ``BOFT`` are lycoris-lora 4.1.3's ``DiagOFTModule`` (``lycoris/modules/diag_oft.py``)
and ``ButterflyOFTModule`` (``lycoris/modules/boft.py``) over a frozen ``nn.Linear`` or
``nn.Conv1d/2d/3d``: the same parameters under the same names (``oft_blocks``, ``alpha``,
``rescale``) and the same map, so what they train is a LyCORIS file (``adapter_state_dict``) that
LyCORIS's own loader, and ``oft merge``, read back.

Both rotate the layer's output channels. LyCORIS computes ``Q = B - B^T`` (no 1/2) for every dense
block ``B`` of ``oft_blocks``, scales all of them by ``c / (||Q||_F + 1e-8)`` when that norm, over
all blocks together, exceeds ``c = alpha * out`` (``alpha <= 0``: no constraint),
``R = (I + Q)(I - Q)^-1``, and with its multiplier ``s`` the linear blend ``M = s R + (1 - s) I``
(not orthogonal unless ``s`` is 0 or 1):

- ``DiagOFT`` (``oft_blocks`` ``[k, b, b]``): ``W' = diag(rescale) blockdiag(M)^T W`` along the
  output channels;
- ``BOFT`` (``oft_blocks`` ``[m, N, b, b]``, ``N = out / b`` a power of two, ``m = log2(N) + 1``
  stages): ``W' = diag(rescale) T_(m-1) ... T_0 W``, ``T_i = P_i^T blockdiag(M_i) P_i`` with
  LyCORIS's permutation ``P_i`` (rows ``(c, 2, 2^i b/2)`` read as ``(c, 2^i b/2, 2)``); each stage
  multiplies by ``M``, not ``M^T``.

The default forward is LyCORIS's weight mode, the base's operation with ``W'`` and the unrotated
bias; ``bypass=True`` is its ``bypass_mode``: the base's output ``Z`` (bias included) goes through
the same channel map. Computed with ``oft.torch.rotate`` (``policy="cayley"``, oft's exact Cayley
of the packed upper triangle of ``Q``) on ``W^T`` (weight mode: ``2 out K b`` flops per stage,
whatever the batch) or on ``Z``; autograd carries the gradients to ``oft_blocks`` (through the
constraint's scale where it binds, as LyCORIS's) and ``rescale``. Not reproduced: LyCORIS's
dropout, rank dropout and module dropout (training only).
"""
from __future__ import annotations

import torch

from .torch import _CONV_TYPES, _check_base, rotate

__all__ = ["DiagOFT", "BOFT"]

_BASES = (torch.nn.Linear,) + _CONV_TYPES


class _LycorisOrthogonal(torch.nn.Module):
    """What DiagOFT and BOFT share: the parameters, LyCORIS's constrained generators, rescale
    and the two forwards around a channel map ``_channel_map(rows)`` over the last dimension."""

    def __init__(self, base: torch.nn.Module, block_size: int, blocks_shape,
                 alpha: float, rescaled: bool, multiplier: float, bypass: bool,
                 constraint_rule: str = "lycoris"):
        super().__init__()
        self.constraint_rule = constraint_rule
        w = base.weight  # checked by _out_channels
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.block_size = block_size
        self.multiplier = float(multiplier)
        self.bypass = bool(bypass)
        dtype = torch.float32 if w.dtype == torch.bfloat16 else w.dtype
        self.oft_blocks = torch.nn.Parameter(torch.zeros(*blocks_shape, dtype=dtype,
                                                         device=w.device))
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=dtype, device=w.device))
        self.rescale = None
        if rescaled:
            self.rescale = torch.nn.Parameter(
                torch.ones(w.shape[0], *([1] * (w.dim() - 1)), dtype=dtype, device=w.device))
        rows, cols = torch.triu_indices(block_size, block_size, 1, device=w.device)
        self.register_buffer("_upper_rows", rows, persistent=False)
        self.register_buffer("_upper_cols", cols, persistent=False)

    def generators(self) -> torch.Tensor:
        """oft's packed generators of LyCORIS's constrained ``Q`` (``oft_blocks``' leading
        shape, then ``b(b-1)/2``)."""
        q = self.oft_blocks - self.oft_blocks.transpose(-1, -2)
        theta = q[..., self._upper_rows, self._upper_cols]
        constraint = float(self.alpha) * self.base.weight.shape[0]
        if self.constraint_rule == "kohya":
            # Always applied, no 1e-8 in the norm: alpha = 0 scales Q to about 0 (R ~ I).
            norm = torch.norm(q)
            return theta * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
        if constraint > 0:
            norm = torch.norm(q) + 1e-8
            if norm > constraint:
                theta = theta * (constraint / norm)
        return theta

    def _blend(self, mapped: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        s = self.multiplier
        return mapped if s == 1.0 else s * mapped + (1.0 - s) * plain

    def _channel_map(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self) -> torch.Tensor:
        """``W'`` (the base's weight shape), differentiable in the parameters."""
        w = self.base.weight
        wt = w.reshape(w.shape[0], -1).t().contiguous()  # [K, out]: the map acts on W^T's rows
        merged_t = self._channel_map(wt)
        if self.rescale is not None:
            merged_t = self.rescale.reshape(1, -1) * merged_t
        return merged_t.t().reshape(w.shape).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        linear = isinstance(base, torch.nn.Linear)
        if not self.bypass:
            if linear:
                return torch.nn.functional.linear(x, self.merged_weight(), base.bias)
            return base._conv_forward(x, self.merged_weight(), base.bias)
        z = base(x)
        channels_last = z if linear else z.movedim(1, -1)
        out = self._channel_map(channels_last.contiguous())
        if self.rescale is not None:
            out = self.rescale.reshape(-1) * out
        out = out.to(z.dtype)
        return out if linear else out.movedim(-1, 1)

    @classmethod
    def from_adapter(cls, base: torch.nn.Module, tensors, prefix: str, **options):
        """The module over ``base`` holding the adapter module ``prefix`` of a LyCORIS (or kohya)
        file's ``tensors`` (e.g. ``safetensors.torch.load_file``): ``<prefix>.oft_blocks`` gives
        the block size, ``.alpha`` the constraint, ``.rescale`` (present or not) ``rescaled``;
        ``options`` are the constructor's others (``multiplier``, ``bypass``,
        ``constraint_rule``). To go on training a file, or to run its forward. Raises ValueError
        naming the tensor for a missing or misshaped tensor, or one that is not this module's."""
        where = f"oft.lycoris.{cls.__name__}.from_adapter"
        head = f"{prefix}."
        names = {"oft_blocks", "alpha", "rescale"}
        extra = sorted(k for k in tensors if k.startswith(head) and k[len(head):] not in names)
        if extra:
            raise ValueError(f"{where}: {', '.join(extra)} belong to no {cls.__name__} module "
                             "(another algorithm's tensors?)")
        for name in ("oft_blocks", "alpha"):
            if head + name not in tensors:
                raise ValueError(f"{where}: no tensor '{head}{name}'")
        blocks, alpha = tensors[head + "oft_blocks"], tensors[head + "alpha"]
        if alpha.numel() != 1:
            raise ValueError(f"{where}: '{head}alpha' has {alpha.numel()} elements, not 1")
        rescale = tensors.get(head + "rescale")
        module = cls(base, int(blocks.shape[-1]), alpha=float(alpha), rescaled=rescale is not None,
                     **options)
        for name, value, param in (("oft_blocks", blocks, module.oft_blocks),
                                   ("rescale", rescale, module.rescale)):
            if value is None:
                continue
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{where}: '{head}{name}' is {list(value.shape)}, but "
                                 f"{type(base).__name__}{tuple(base.weight.shape)} needs "
                                 f"{list(param.shape)}")
            with torch.no_grad():
                param.copy_(value)
        return module

    def adapter_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors under LyCORIS's names (``<prefix>.oft_blocks``, ``.alpha``, ``.rescale``),
        detached: with a LyCORIS module name such as ``lora_unet_mid_block_resnets_0_conv1`` as
        prefix, what LyCORIS saves."""
        head = f"{prefix}." if prefix else ""
        tensors = {f"{head}oft_blocks": self.oft_blocks.detach(),
                   f"{head}alpha": self.alpha.detach()}
        if self.rescale is not None:
            tensors[f"{head}rescale"] = self.rescale.detach()
        return tensors

    def extra_repr(self) -> str:
        return (f"oft_blocks={list(self.oft_blocks.shape)}, alpha={float(self.alpha)}, "
                f"constraint_rule={self.constraint_rule!r}, "
                f"rescaled={self.rescale is not None}, multiplier={self.multiplier}, "
                f"bypass={self.bypass}")


class DiagOFT(_LycorisOrthogonal):
    """LyCORIS's diag-OFT (see the module doc): ``oft_blocks`` ``[k, b, b]`` over the layer's
    ``k b`` output channels, zero at start (the base's output).

    ``block_size`` is the ``b`` LyCORIS's ``factorization(out, lora_dim)`` chose (its module's
    ``block_size``); ``b <= k``, as LyCORIS's loader rebuilds ``[k, b, b]`` with the smaller factor
    first.

    ``constraint_rule="kohya"`` is kohya sd-scripts' OFT (``networks/oft.py``, commit 2d8ee3c, the
    same tensors, its network ``dim`` the block count ``k``): ``Q`` scaled by
    ``(min(n, c) + 1e-8) / (n + 1e-8)``, ``n = ||Q||_F``, always, so that ``alpha = 0`` makes
    ``R ~ I`` (LyCORIS reads it as "no constraint"); no rescale, no bypass, any ``b``.
    """

    def __init__(self, base: torch.nn.Module, block_size: int, *, alpha: float = 0.0,
                 rescaled: bool = False, multiplier: float = 1.0, bypass: bool = False,
                 constraint_rule: str = "lycoris"):
        where = "oft.lycoris.DiagOFT"
        out = _out_channels(where, base)
        if not _positive_int(block_size) or out % block_size != 0:
            raise ValueError(f"{where}: block_size {block_size!r} must be a positive int dividing "
                             f"the {out} output channels of {type(base).__name__}"
                             f"{tuple(base.weight.shape)}")
        if constraint_rule not in ("lycoris", "kohya"):
            raise ValueError(f"{where}: constraint_rule must be 'lycoris' or 'kohya', got "
                             f"{constraint_rule!r}")
        if constraint_rule == "kohya" and (rescaled or bypass):
            raise ValueError(f"{where}: kohya's OFT has no rescale and no bypass mode (got "
                             f"rescaled={rescaled}, bypass={bypass})")
        if constraint_rule == "lycoris" and block_size > out // block_size:
            raise ValueError(f"{where}: block_size {block_size} exceeds the block count "
                             f"{out // block_size} ({out} output channels); LyCORIS always has "
                             "block_num >= block_size and could not read the result back")
        super().__init__(base, block_size, (out // block_size, block_size, block_size),
                         alpha, rescaled, multiplier, bypass, constraint_rule)
        self.block_num = out // block_size

    def _channel_map(self, rows: torch.Tensor) -> torch.Tensor:
        # W'^T = W^T M (and Z M): rotate's Y = X R per block, blended.
        return self._blend(rotate(rows, self.generators(), self.block_size, policy="cayley"), rows)


class BOFT(_LycorisOrthogonal):
    """LyCORIS's BOFT (see the module doc): ``oft_blocks`` ``[m, N, b, b]``, zero at start, over
    ``out = N b`` output channels with ``b`` even, ``N`` a power of two and ``m = log2(N) + 1``.

    ``block_size`` is the ``b`` LyCORIS's ``butterfly_factor(out, lora_dim)`` chose (its module's
    ``block_size``: the largest even ``b <= lora_dim`` with ``out / b`` a power of two).
    """

    def __init__(self, base: torch.nn.Module, block_size: int, *, alpha: float = 0.0,
                 rescaled: bool = False, multiplier: float = 1.0, bypass: bool = False):
        where = "oft.lycoris.BOFT"
        out = _out_channels(where, base)
        n = out // block_size if _positive_int(block_size) else 0
        if not _positive_int(block_size) or block_size % 2 or out % block_size \
                or n & (n - 1):
            raise ValueError(f"{where}: block_size {block_size!r} must be an even int dividing "
                             f"the {out} output channels of {type(base).__name__}"
                             f"{tuple(base.weight.shape)} into a power-of-two number of blocks "
                             "(LyCORIS's butterfly factorization)")
        stages = n.bit_length()  # log2(N) + 1
        super().__init__(base, block_size, (stages, n, block_size, block_size), alpha,
                         rescaled, multiplier, bypass)
        self.block_num, self.stages = n, stages

    def _channel_map(self, rows: torch.Tensor) -> torch.Tensor:
        # LyCORIS's stage i views the channels as (c, 2, k), k = 2^i b / 2, reads them as
        # (c, k, 2), multiplies each block of b by M (v -> M v; as rows v^T M^T, which is
        # rotate's X R with R(-theta) = R(theta)^T, the exact Cayley of -Q) and puts them back.
        # The reorderings are transposed copies (their backward too), not gathers.
        theta = self.generators()
        for i in range(self.stages):
            k = (1 << i) * self.block_size // 2
            gathered = rows.unflatten(-1, (-1, 2, k)).transpose(-1, -2).flatten(-3).contiguous()
            mapped = self._blend(rotate(gathered, (-theta[i]).contiguous(), self.block_size,
                                        policy="cayley"), gathered)
            rows = mapped.unflatten(-1, (-1, k, 2)).transpose(-1, -2).flatten(-3)
        return rows.contiguous()


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _out_channels(where: str, base) -> int:
    return _check_base(where, base, _BASES, "Linear, Conv1d, Conv2d or Conv3d").shape[0]
