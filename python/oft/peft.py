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

PEFT's BOFT and HRA ``Linear`` layers (``peft.tuners.boft.layer.Linear``,
``peft.tuners.hra.layer.HRALinear``) are switched too, by class, to ``AcceleratedBOFTLinear`` and
``AcceleratedHRALinear``: same parameters (``boft_R``, ``boft_s``; ``hra_u``), buffers and
state-dict keys; merge, unmerge and saving stay PEFT's. Their forward rotates the input with oft
(``oft.torch.butterfly_rotate``, ``householder_rotate``: never the d x d matrix PEFT forms) and
keeps PEFT's layer around it: BOFT's ``base_layer(x M)`` then ``(y - bias) * boft_s + bias``,
HRA's ``linear(x R_H^T, W0, bias)`` with no gradient to W0 (PEFT reads ``weight.data``). BOFT's
``boft_dropout`` is honoured exactly in training: the same two draws PEFT makes
(``torch.randint`` of the factor, ``torch.randperm`` of its blocks) from the same generator,
and the dropped blocks' ``boft_R`` zeroed, whose Cayley block is exactly I. The forward falls back
to PEFT's own, with the same results, where oft does not apply: adapters disabled or merged,
several active adapters, inputs or parameters not float32/float64 of one dtype (or bfloat16
inputs and base with float32 adapter weights, PEFT's bfloat16 model), or not on the CPU. With
bfloat16 inputs the rotation is float32 arithmetic rounded to bfloat16 once, and the base layer
runs in bfloat16; PEFT's BOFT rounds its d x d rotation to bfloat16 instead, and PEFT's HRA runs
the whole layer in float32 (the numbers differ at bfloat16 rounding level).
BOFT and HRA Conv2d layers stay PEFT's (``TypeError`` unless ``skip_unsupported=True``, as for
OFT). Note that PEFT on a CPU without its ``fbd_cuda`` extension forces a BOFT layer to one
butterfly factor; oft computes any m that ``boft_R [m, N, b, b]`` holds (docs/families.md 1.1).
"""
from __future__ import annotations

import torch

import torch.nn.functional as F

from .torch import butterfly_rotate, householder_rotate, rotate

__all__ = ["accelerate", "restore", "AcceleratedOFTRotationModule", "AcceleratedBOFTLinear",
           "AcceleratedHRALinear"]


def _peft_layer_module():
    try:
        from peft.tuners.oft import layer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("oft.peft needs the 'peft' package (pip install peft)") from error
    return layer


_layer = _peft_layer_module()
from peft.tuners.boft import layer as _boft  # noqa: E402
from peft.tuners.hra import layer as _hra  # noqa: E402


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


_FAMILY_DTYPES = (torch.float32, torch.float64)


def _single_adapter(layer, parameters):
    """The one active adapter oft runs, or None where PEFT's forward must (disabled, merged,
    none or several active)."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in parameters.keys()]
    return active[0] if len(active) == 1 else None


def _oft_runs(x, parameters, base=()) -> bool:
    """Whether oft's CPU family kernels take x with these adapter parameters (and base tensors)
    as they are: all float32 or all float64, or bfloat16 x and base with float32 parameters
    (PEFT keeps a bfloat16 model's adapter weights in float32)."""
    if x.device.type != "cpu" or any(t.device.type != "cpu" for t in (*parameters, *base)):
        return False
    if x.dtype in _FAMILY_DTYPES:
        return all(t.dtype == x.dtype for t in (*parameters, *base))
    return (x.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in parameters)
            and all(t.dtype == torch.bfloat16 for t in base))


def _boft_dropout_keep(boft_R: torch.Tensor, dropout) -> torch.Tensor | None:
    """PEFT's multiplicative block dropout as a 0/1 mask over boft_R's [m, N] blocks (None when
    it does nothing). The same draws as PEFT's, in its order, so that both sides drop the same
    blocks: one factor by ``torch.randint(0, m)``, in it ``int(p N)`` blocks by
    ``torch.randperm(N)`` (those at positions j with perm[j] < int(p N))."""
    if not (isinstance(dropout, _boft.MultiplicativeDropoutLayer) and dropout.training):
        return None
    m, n = boft_R.shape[0], boft_R.shape[1]
    factor = torch.randint(0, m, (1,)).item()
    dropped = int(dropout.p * n)
    perm = torch.randperm(n)
    keep = torch.ones(m, n, dtype=boft_R.dtype)
    keep[factor] = (perm >= dropped).to(boft_R.dtype)
    return keep.view(m, n, 1, 1)


class AcceleratedBOFTLinear(_boft.Linear):
    """PEFT's BOFT ``Linear`` with its forward's rotation on oft (see the module doc)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = _single_adapter(self, self.boft_R)
        base = self.get_base_layer()
        base_tensors = (base.weight,) if base.bias is None else (base.weight, base.bias)
        if adapter is None or not _oft_runs(x, (self.boft_R[adapter], self.boft_s[adapter]),
                                            base_tensors):
            return super().forward(x, *args, **kwargs)
        boft_R, boft_s = self.boft_R[adapter], self.boft_s[adapter]
        keep = _boft_dropout_keep(boft_R, self.boft_dropout[adapter])
        if keep is not None:
            # A zero boft_R block has S = 0 and Cayley block I, PEFT's dropped block; its
            # gradient is zero there, as PEFT's is through (1 - mask) R + mask I.
            boft_R = boft_R * keep
        result = self.base_layer(butterfly_rotate(x, boft_R), *args, **kwargs)
        bias = self.base_layer.bias
        scale = boft_s.squeeze(-1)
        # PEFT's order and dtypes: the scale is float32 for a bfloat16 model, the result is cast
        # back to x's dtype.
        if bias is None:
            return (result * scale).to(x.dtype)
        return ((result - bias) * scale + bias).to(x.dtype)


class AcceleratedHRALinear(_hra.HRALinear):
    """PEFT's HRA ``Linear`` with its forward's rotation on oft (see the module doc)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = _single_adapter(self, self.hra_u)
        weight = self.get_base_layer().weight
        bias = self.get_base_layer().bias
        base_tensors = (weight,) if bias is None else (weight, bias)
        if adapter is None or not _oft_runs(x, (self.hra_u[adapter],), base_tensors):
            return super().forward(x, *args, **kwargs)
        x_rot = householder_rotate(x, self.hra_u[adapter], apply_GS=self.hra_apply_GS[adapter])
        return F.linear(x_rot, weight.detach(), bias)


# PEFT's family layer types oft runs, and what each becomes.
_FAMILY_LAYERS = {_boft.Linear: AcceleratedBOFTLinear, _hra.HRALinear: AcceleratedHRALinear}
_FAMILY_BASES = (_boft.BOFTLayer, _hra.HRALayer)


def _rotations(module):
    """(dict name, adapter, rotation) of every PEFT rotation a layer holds."""
    for dict_name in ("oft_R", "oft_embedding_R"):
        for adapter, rotation in getattr(module, dict_name, {}).items():
            yield dict_name, adapter, rotation


def accelerate(model: torch.nn.Module, *, skip_unsupported: bool = False) -> list[str]:
    """Runs every PEFT OFT rotation and BOFT/HRA Linear layer of ``model`` on oft, in place;
    returns the names switched.

    Raises ``TypeError`` naming the first PEFT OFT, BOFT or HRA layer oft does not accelerate
    (Conv2d, or a layer type other than PEFT's OFT ``Linear`` and ``Embedding`` and BOFT/HRA
    ``Linear``) before switching anything,
    unless ``skip_unsupported`` (then those stay on PEFT's path). Raises ``ValueError`` if the
    model has no PEFT OFT layer at all.
    """
    supported = (_layer.Linear, _layer.Embedding)
    switched, found = [], False
    plan = []
    families = []
    for name, module in model.named_modules():
        if isinstance(module, _FAMILY_BASES):
            found = True
            if type(module) in _FAMILY_LAYERS:
                families.append((name, module))
            elif type(module) not in _FAMILY_LAYERS.values() and not skip_unsupported:
                raise TypeError(f"oft.peft.accelerate: {name} is a PEFT "
                                f"{type(module).__module__}.{type(module).__name__}; oft "
                                "accelerates PEFT's BOFT and HRA Linear layers only "
                                "(skip_unsupported=True leaves the others on PEFT's path)")
            continue
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
        raise ValueError("oft.peft.accelerate: the model has no PEFT OFT layer (nor BOFT or HRA; "
                         "wrap it with peft.get_peft_model and an OFTConfig first)")
    for qualified, rotation in plan:
        rotation.__class__ = AcceleratedOFTRotationModule
        switched.append(qualified)
    for name, module in families:
        module.__class__ = _FAMILY_LAYERS[type(module)]
        switched.append(name)
    return switched


def restore(model: torch.nn.Module) -> int:
    """Puts every accelerated rotation and layer of ``model`` back on PEFT's own forward; returns
    the count."""
    count = 0
    for module in model.modules():
        if type(module) is AcceleratedOFTRotationModule:
            module.__class__ = _layer.OFTRotationModule
            count += 1
        for peft_type, accelerated in _FAMILY_LAYERS.items():
            if type(module) is accelerated:
                module.__class__ = peft_type
                count += 1
    return count

