"""A one-line drop-in for Hugging Face PEFT's OFT: ``oft.peft.accelerate(model)``.

Every PEFT OFT rotation (``OFTRotationModule`` of a PEFT OFT ``Linear`` or ``Embedding`` layer)
of ``model`` is switched, in place, to ``AcceleratedOFTRotationModule``: the same module with the
same parameter (``weight``, ``[r, b(b-1)/2]``), buffers and state-dict keys, whose forward runs
oft's kernels (``oft.torch.rotate``) instead of PEFT's dense ``einsum`` over ``torch.linalg``/
``bmm`` powers. PEFT's semantics are kept exactly:

- the input is cast to the weight's dtype and the output back, as PEFT does; except that a
  bfloat16 input on the CPU with a float32 weight (PEFT's default for a bfloat16 model, whose
  adapter weights it keeps in float32) goes to oft's bfloat16 kernels directly, which take a
  float32 theta: no float32 copy of the input. With ``oft.torch.set_bf16_arithmetic("float")``
  the result is bit for bit the cast path's; with ``"dot_product"`` (the default where the CPU
  has AVX512_BF16) it is within the bound of docs/bf16.md;
- Neumann branch (``use_cayley_neumann=True``): PEFT's polynomial for its
  ``num_cayley_neumann_terms`` T, every T (T <= 1 gives I, T = 2 gives I + 2Q, T >= 3 is R_k with
  k = T - 2, T = 3 as T = 4);
- exact branch (``use_cayley_neumann=False``): PEFT computes ``(I - Q)(I + Q)^-1 = R(-Q)``, so oft
  runs its exact Cayley on ``-weight`` (the gradient flows through the negation);
- ``block_share``: one generator for all ``in_features / b`` blocks;
- COFT (``coft=True``): PEFT's own projection of ``weight`` (its ``_project_batch``, under
  ``no_grad``) runs before each forward, exactly as in PEFT.

Merging, unmerging, ``save_pretrained`` and adapter switching stay PEFT's code (they call
``get_weight``, which is untouched). What oft cannot take is refused with a message, never run
with other math: Conv2d layers (PEFT unfolds patches) and layer types oft has not been checked
against (e.g. bitsandbytes-quantized bases) raise ``TypeError`` unless ``skip_unsupported=True``,
which leaves them on PEFT's path and lists them; a weight in a dtype other than float32, float64 or
bfloat16 (CPU; CUDA also float16) or on a device this build does not run on raises at the first
forward. A bfloat16 model computes R and dtheta in float32 from its bfloat16 weight (PEFT
computes them in bfloat16) and rounds the rotated input to bfloat16 once.
"""
from __future__ import annotations

import torch

from .torch import rotate

__all__ = ["accelerate", "restore", "AcceleratedOFTRotationModule"]


def _peft_layer_module():
    try:
        from peft.tuners.oft import layer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("oft.peft needs the 'peft' package (pip install peft)") from error
    return layer


_layer = _peft_layer_module()


class AcceleratedOFTRotationModule(_layer.OFTRotationModule):
    """PEFT's ``OFTRotationModule`` with its forward on oft's kernels (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        required_dtype = x.dtype
        bf16_kernels = (x.dtype == torch.bfloat16 and self.weight.dtype == torch.float32
                        and x.device.type == "cpu")
        if required_dtype != self.weight.dtype and not bf16_kernels:
            x = x.to(self.weight.dtype)
        if x.dim() == 4:
            raise TypeError("oft.peft: a 4-D input reached an accelerated OFT rotation; Conv2d "
                            "layers are not accelerated (call oft.peft.restore(model))")
        if self.coft:
            with torch.no_grad():
                self.weight.copy_(self._project_batch(self.weight, eps=self.eps))
        if self.use_cayley_neumann:
            y = rotate(x, self.weight, self.block_size, shared=self.block_share,
                       policy="peft_neumann", num_terms=self.num_cayley_neumann_terms)
        else:
            y = rotate(x, -self.weight, self.block_size, shared=self.block_share, policy="cayley")
        return y.to(required_dtype)


def _rotations(module):
    """(dict name, adapter, rotation) of every PEFT rotation a layer holds."""
    for dict_name in ("oft_R", "oft_embedding_R"):
        for adapter, rotation in getattr(module, dict_name, {}).items():
            yield dict_name, adapter, rotation


def accelerate(model: torch.nn.Module, *, skip_unsupported: bool = False) -> list[str]:
    """Runs every PEFT OFT rotation of ``model`` on oft, in place; returns the names switched.

    Raises ``TypeError`` naming the first PEFT OFT layer oft does not accelerate (Conv2d, or a
    layer type other than PEFT's OFT ``Linear`` and ``Embedding``) before switching anything,
    unless ``skip_unsupported`` (then those stay on PEFT's path). Raises ``ValueError`` if the
    model has no PEFT OFT layer at all.
    """
    supported = (_layer.Linear, _layer.Embedding)
    switched, found = [], False
    plan = []
    for name, module in model.named_modules():
        if not isinstance(module, _layer.OFTLayer):
            continue
        found = True
        if type(module) not in supported:
            if skip_unsupported:
                continue
            raise TypeError(f"oft.peft.accelerate: {name} is a PEFT OFT {type(module).__module__}."
                            f"{type(module).__name__}; oft accelerates PEFT's OFT Linear and "
                            "Embedding layers only (skip_unsupported=True leaves the others on "
                            "PEFT's path)")
        for dict_name, adapter, rotation in _rotations(module):
            if type(rotation) is _layer.OFTRotationModule:
                plan.append((f"{name}.{dict_name}.{adapter}", rotation))
    if not found:
        raise ValueError("oft.peft.accelerate: the model has no PEFT OFT layer (wrap it with "
                         "peft.get_peft_model and an OFTConfig first)")
    for qualified, rotation in plan:
        rotation.__class__ = AcceleratedOFTRotationModule
        switched.append(qualified)
    return switched


def restore(model: torch.nn.Module) -> int:
    """Puts every accelerated rotation of ``model`` back on PEFT's own forward; returns the count."""
    count = 0
    for module in model.modules():
        if type(module) is AcceleratedOFTRotationModule:
            module.__class__ = _layer.OFTRotationModule
            count += 1
    return count

