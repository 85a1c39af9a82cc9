"""Serving many OFT adapters in one batch (CPU, forward only): ``oft.serve``.

OFTv2 rotates a layer's input, ``y = (x R) W0^T + b``, so a batch whose requests carry different
adapters needs only each token's own ``x R`` and then one shared base GEMM. oft keeps every
adapter's block-diagonal R resident per layer (``oft._core.AdapterBank``, the C++
``oft::AdapterBank``), computed once when the adapter is loaded, and rotates each token by its own.

- ``AdapterBankRotation(features, capacity)``: the bank as a module; ``add(rotations)`` takes R's
  blocks ``[g, b, b]`` (``Y = X R``), ``forward(x, ids)`` rotates token t of ``x`` (any leading
  shape) by the adapter in slot ``ids[t]`` (``-1``: none). ``ids`` are per token
  (``x.shape[:-1]``) or per request (``[x.shape[0]]``, the same id for a request's every token).
- ``ServingLinear(base, capacity)``: a frozen ``nn.Linear`` behind a bank: ``base(bank(x, ids))``.
- ``from_peft(model, adapters)``: a transformers model with several PEFT OFT adapters (folders
  written by PEFT's ``save_pretrained``, or a ``PeftModel`` with them loaded); every PEFT OFT
  ``Linear`` becomes a ``ServingLinear`` whose bank holds the R of each adapter that targets it.
  The returned ``MultiAdapterModel`` runs one forward over a batch whose requests name their
  adapters: ``served(**inputs, adapter_ids=["alice", None, "bob"])`` (``None`` or ``-1``: the
  base model), or ``with served.using(ids): model.generate(...)``.

What is provided: PEFT's OFT semantics for Linear layers, each adapter exactly as PEFT would run it
alone (its Neumann polynomial for ``num_cayley_neumann_terms``, the exact branch's
``(I - Q)(I + Q)^-1``, ``block_share``, and COFT's projection of the saved weight, which PEFT's
forward applies before every use, applied once at load); float32 and float64 models, and
bfloat16 models (float32 R, bfloat16 activations rotated in float32 and rounded once, as PEFT's
bfloat16 path casts to its float32 adapter weight and back); layers that some adapters target and
others do not (identity there). Options of every bank (``AdapterBankRotation``, ``ServingLinear``,
``from_peft``): ``storage=torch.bfloat16`` keeps R rounded once to bfloat16 (half the memory, float32
banks), and ``bf16_arithmetic="dot_product"`` computes bfloat16 activations with ``vdpbf16ps``
where the CPU and build have AVX512_BF16 (``oft.has_bf16_dot_product``; docs/bf16.md has its error
bound; not bit for bit PEFT's float32 path, which ``"float"``, the default, is).

What is not: autograd (serving is forward-only; inputs that require grad, or a layer whose base
parameters were made trainable again under grad mode, are refused with ``ValueError``: train with
``oft.torch`` or ``oft.peft``); PEFT OFT ``Conv2d`` and ``Embedding`` layers, other PEFT methods
(LoRA, BOFT, ...) and quantized bases (``TypeError`` naming the layer or adapter); CUDA tensors;
float16 activations; concurrent forwards over one ``MultiAdapterModel`` (the ids of a forward are
module state: one forward at a time per model; the banks themselves are safe to share).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Mapping, Sequence

import torch

from . import _core
from .torch import rotation_blocks

__all__ = ["AdapterBankRotation", "ServingLinear", "MultiAdapterModel", "from_peft",
           "peft_rotation_blocks", "ROUTINGS"]

ROUTINGS = ("auto", "contiguous", "gathered")
_FORWARD_ONLY = ("oft.serve is forward-only (no autograd for the adapter bank); train with "
                 "oft.torch or oft.peft, or pass a tensor that does not require grad")


def _slot_ids(where: str, ids, capacity: int) -> torch.Tensor:
    """ids as a CPU int32 tensor, each in [-1, capacity): converted once, range-checked first
    (the bank checks again, and that the slot holds an adapter)."""
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{where}: ids {list(ids.shape)} are {ids.dtype}; expected integer adapter "
                        "slots (-1 for none)")
    if ids.device.type != "cpu":
        raise ValueError(f"{where}: ids {list(ids.shape)} are on {ids.device}; oft.serve runs on "
                         "the CPU")
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= capacity):
        bad = ids[(ids < -1) | (ids >= capacity)][0].item()
        raise ValueError(f"{where}: adapter id {bad} is out of range [-1, {capacity}) (-1 means "
                         "no adapter)")
    return ids.to(torch.int32)


def _token_ids(where: str, ids: torch.Tensor, leading: torch.Size) -> torch.Tensor:
    """One id per row of x.reshape(-1, d): ids per token (shape ``leading``), per request
    (``[leading[0]]``, expanded over the other dimensions) or one id for all (a 0-d tensor)."""
    if ids.shape == leading:
        return ids.reshape(-1).contiguous()
    if ids.dim() == 0:
        return ids.expand(leading).reshape(-1).contiguous()
    if ids.dim() == 1 and len(leading) >= 1 and ids.shape[0] == leading[0]:
        per_request = ids.view(-1, *([1] * (len(leading) - 1)))
        return per_request.expand(leading).reshape(-1).contiguous()
    requests = leading[0] if len(leading) else 1
    raise ValueError(f"{where}: ids {list(ids.shape)} fit neither x's tokens {list(leading)} nor "
                     f"its requests [{requests}] (one id per token, or one per request of the "
                     "first dimension)")


def _check_bank_options(where: str, dtype: torch.dtype, storage, bf16_arithmetic) -> None:
    """Refuses a bank's storage and arithmetic options that the bank could not honour."""
    if storage is not None and storage not in (dtype, torch.bfloat16):
        raise TypeError(f"{where}: storage {storage} is not the bank's dtype {dtype} or "
                        "torch.bfloat16")
    if storage == torch.bfloat16 and dtype != torch.float32:
        raise TypeError(f"{where}: storage torch.bfloat16 is for float32 banks, this one is {dtype}")
    if bf16_arithmetic not in ("float", "dot_product"):
        raise ValueError(f"{where}: bf16_arithmetic {bf16_arithmetic!r} is not 'float' or "
                         "'dot_product'")
    if bf16_arithmetic == "dot_product":
        if dtype != torch.float32:
            raise ValueError(f"{where}: bf16_arithmetic 'dot_product' is for float32 banks (bfloat16 "
                             f"activations), this one is {dtype}")
        if not _core.has_bf16_dot_product:
            raise ValueError(f"{where}: bf16_arithmetic 'dot_product' needs oft._core built with "
                             "AVX512_BF16 (oft.has_bf16_dot_product is False here)")


class AdapterBankRotation(torch.nn.Module):
    """``y = x R_{ids}``: token t of ``x`` rotated by the adapter in slot ``ids[t]`` (-1: none).

    ``features`` is the layer's input width; ``capacity`` the number of slots; ``dtype`` the
    bank's (``torch.float32``: also bfloat16 activations; or ``torch.float64``); ``shard``
    ``(first, count)`` keeps only those input features (a row-parallel rank's columns: ``x`` then
    has ``count`` columns); ``storage`` how R is kept (``None``: the bank's dtype; or
    ``torch.bfloat16`` for a float32 bank, half the memory); ``bf16_arithmetic`` how bfloat16
    activations are computed (``"float"``, or ``"dot_product"`` with AVX512_BF16). Forward only:
    ``x`` must not require grad.
    """

    def __init__(self, features: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                 shard: tuple[int, int] | None = None, storage: torch.dtype | None = None,
                 bf16_arithmetic: str = "float"):
        super().__init__()
        where = "oft.serve.AdapterBankRotation"
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{where}: dtype {dtype} is not torch.float32 or "
                            "torch.float64 (a float32 bank takes bfloat16 activations too)")
        _check_bank_options(where, dtype, storage, bf16_arithmetic)
        first, count = (0, None) if shard is None else shard
        self.bank = _core.AdapterBank(features, capacity, str(dtype)[len("torch."):], first, count,
                                      None if storage is None else str(storage)[len("torch."):],
                                      bf16_arithmetic)
        self.dtype = dtype
        self.last_routing = None  # what the last forward's bank apply chose

    @property
    def features(self) -> int:
        return self.bank.shard_count

    @property
    def capacity(self) -> int:
        return self.bank.capacity

    def add(self, rotations: torch.Tensor, *, shared: bool = False) -> int:
        """Adds R's blocks ``[g, b, b]`` (``Y = X R``; ``g = 1`` with ``shared``, else
        ``features / b``), cast to the bank's dtype; returns the slot."""
        rotations = self._blocks(rotations)
        return self.bank.add(rotations.shape[-1], bool(shared), rotations)

    def replace(self, slot: int, rotations: torch.Tensor, *, shared: bool = False) -> None:
        rotations = self._blocks(rotations)
        self.bank.replace(slot, rotations.shape[-1], bool(shared), rotations)

    def remove(self, slot: int) -> None:
        self.bank.remove(slot)

    def __contains__(self, slot: int) -> bool:
        return self.bank.contains(slot)

    def __len__(self) -> int:
        return self.bank.size()

    def adapter_bytes(self, slot: int) -> int:
        return self.bank.adapter_bytes(slot)

    def _blocks(self, rotations) -> torch.Tensor:
        if not isinstance(rotations, torch.Tensor):
            raise TypeError("oft.serve.AdapterBankRotation: rotations must be a torch.Tensor "
                            f"[g, b, b], got {type(rotations).__name__}")
        if rotations.dim() != 3:
            raise ValueError(f"oft.serve.AdapterBankRotation: rotations {list(rotations.shape)} "
                             "must be [g, b, b] (R's blocks)")
        return rotations.detach().to(device="cpu", dtype=self.dtype).contiguous()

    def forward(self, x: torch.Tensor, ids, routing: str = "auto",
                out: torch.Tensor | None = None) -> torch.Tensor:
        """``x R_{ids}`` in a new tensor, or written into ``out`` (contiguous, ``x``'s dtype and
        ``[tokens, features]`` rows, disjoint from ``x``) and returned viewed as ``x``'s shape."""
        where = "oft.serve.AdapterBankRotation"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.requires_grad:
            raise ValueError(f"{where}: x {list(x.shape)} requires grad; {_FORWARD_ONLY}")
        allowed = (self.dtype, torch.bfloat16) if self.dtype == torch.float32 else (self.dtype,)
        if x.dtype not in allowed:
            raise TypeError(f"{where}: x {list(x.shape)} is {x.dtype}; this {self.dtype} bank "
                            f"takes {' or '.join(map(str, allowed))} activations")
        if x.dim() < 1 or x.shape[-1] != self.features:
            raise ValueError(f"{where}: x {list(x.shape)} must end in the bank's "
                             f"{self.features} features")
        if routing not in ROUTINGS:
            raise ValueError(f"{where}: routing {routing!r} is not one of {', '.join(ROUTINGS)}")
        token_ids = _token_ids(where, _slot_ids(where, ids, self.capacity), x.shape[:-1])
        rows = x.reshape(-1, self.features)
        if rows.shape[0] > 1 and (rows.stride(1) != 1 or rows.stride(0) < self.features):
            rows = rows.contiguous()
        if out is None:
            y = torch.empty(rows.shape, dtype=x.dtype)
        else:
            if (out.shape != rows.shape or out.dtype != x.dtype or out.device.type != "cpu"
                    or not out.is_contiguous()):
                raise ValueError(f"{where}: out {list(out.shape)} {out.dtype} must be a contiguous "
                                 f"CPU tensor of shape {list(rows.shape)} and dtype {x.dtype}")
            y = out
        self.last_routing = self.bank.apply(rows, y, token_ids, routing)
        return y.view(x.shape)

    def extra_repr(self) -> str:
        return (f"features={self.features}, capacity={self.capacity}, dtype={self.dtype}, "
                f"storage={self.bank.storage}, bf16_arithmetic={self.bank.bf16_arithmetic}, "
                f"adapters={len(self)}")


class ServingLinear(torch.nn.Module):
    """A frozen ``nn.Linear`` serving many OFT adapters: ``base(x R_{ids})``.

    ``forward(x, ids)`` takes slots of this layer's bank (``self.rotation``); with ``ids=None``
    it uses ``self.ids`` (set by ``MultiAdapterModel`` for the duration of a forward), and with
    neither it is the base layer. The bank is float64 for a float64 base, float32 otherwise (a
    bfloat16 base then gets bfloat16 activations rotated in float32).
    """

    def __init__(self, base: torch.nn.Linear, capacity: int, *, storage: torch.dtype | None = None,
                 bf16_arithmetic: str = "float"):
        super().__init__()
        if not isinstance(base, torch.nn.Linear):
            raise TypeError("oft.serve.ServingLinear: base must be a torch.nn.Linear, got "
                            f"{type(base).__name__}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base_layer = base
        dtype = torch.float64 if base.weight.dtype == torch.float64 else torch.float32
        self.rotation = AdapterBankRotation(base.in_features, capacity, dtype=dtype,
                                            storage=storage, bf16_arithmetic=bf16_arithmetic)
        self.ids = None
        # The rotated input lives only until the base GEMM has read it, so one buffer per layer
        # (grown to the largest batch seen) serves every forward: a fresh 64 MiB tensor per call
        # was measured to cost a prefill 4x the rotation itself (its pages faulted in each time).
        # One forward at a time per layer, as MultiAdapterModel already requires.
        self._rotated = None

    def forward(self, x: torch.Tensor, ids=None) -> torch.Tensor:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.base_layer.parameters()):
            raise ValueError("oft.serve.ServingLinear: the base layer's parameters require grad "
                             f"under grad mode; {_FORWARD_ONLY} (or run under torch.no_grad())")
        if isinstance(x, torch.Tensor) and x.requires_grad:
            raise ValueError(f"oft.serve.ServingLinear: x {list(x.shape)} requires grad; "
                             f"{_FORWARD_ONLY}")
        ids = self.ids if ids is None else ids
        if ids is not None:
            x = self.rotation(x, ids, out=self._rotated_rows(x))
        return self.base_layer(x)

    def _rotated_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.rotation.features:
            return None  # the bank's own checks word the error
        rows = x.numel() // x.shape[-1]
        need = rows * x.shape[-1]
        if self._rotated is None or self._rotated.dtype != x.dtype or self._rotated.numel() < need:
            self._rotated = torch.empty(need, dtype=x.dtype)
        return self._rotated[:need].view(rows, x.shape[-1])


def peft_rotation_blocks(rotation) -> tuple[torch.Tensor, bool]:
    """``(R's blocks [g, b, b] in float64, shared)`` of a PEFT ``OFTRotationModule`` as PEFT's
    forward uses it: COFT's projection of the weight first (PEFT applies it before each use), then
    the Neumann branch's polynomial for ``num_cayley_neumann_terms``, or the exact branch, which
    PEFT computes as ``(I - Q)(I + Q)^-1 = R(-Q)``. Computed in float64 and rounded once by
    whoever stores it."""
    weight = rotation.weight.detach()
    if rotation.coft:
        with torch.no_grad():
            weight = rotation._project_batch(weight, eps=rotation.eps)
    weight = weight.to(torch.float64)
    b = rotation.block_size
    if rotation.use_cayley_neumann:
        blocks = rotation_blocks(weight, b, policy="peft_neumann",
                                 num_terms=rotation.num_cayley_neumann_terms)
    else:
        blocks = rotation_blocks(-weight, b, policy="cayley")
    return blocks.detach(), bool(rotation.block_share)


class MultiAdapterModel:
    """A model whose ``ServingLinear`` layers hold several adapters (made by ``from_peft``).

    ``adapters``: the adapter names, in index order; an adapter's index is its id.
    ``served(*args, adapter_ids=..., **kwargs)`` runs ``model(*args, **kwargs)`` once with each
    request (first dimension of the inputs) through its own adapter; ``adapter_ids`` is a sequence
    with one name, index, ``None`` or ``-1`` (the base model) per request, or an integer tensor of
    indices per request ``[batch]`` or per token (each layer's ``x.shape[:-1]``).
    ``using(adapter_ids)`` does the same for every forward inside a ``with`` block (generation).
    """

    def __init__(self, model: torch.nn.Module, adapters: Sequence[str],
                 layers: Mapping[str, tuple[ServingLinear, torch.Tensor]]):
        self.model = model
        self.adapters = list(adapters)
        # name -> (layer, table): table[k + 1] is the layer's slot of adapter k, -1 where the
        # adapter does not target the layer; table[0] = -1 for the base model.
        self.layers = dict(layers)

    def index(self, name: str) -> int:
        try:
            return self.adapters.index(name)
        except ValueError:
            raise ValueError(f"oft.serve: no adapter named {name!r} (adapters: "
                             f"{', '.join(self.adapters)})") from None

    def _global_ids(self, adapter_ids) -> torch.Tensor:
        if isinstance(adapter_ids, torch.Tensor):
            return _slot_ids("oft.serve.MultiAdapterModel: adapter_ids", adapter_ids,
                             len(self.adapters))
        if isinstance(adapter_ids, (str, bytes)) or not isinstance(adapter_ids, Iterable):
            raise TypeError("oft.serve.MultiAdapterModel: adapter_ids must be a sequence (one "
                            "adapter name, index or None per request) or an integer tensor, got "
                            f"{type(adapter_ids).__name__}")
        ids = []
        for a in adapter_ids:
            if a is None:
                ids.append(-1)
            elif isinstance(a, str):
                ids.append(self.index(a))
            elif isinstance(a, int) and not isinstance(a, bool):
                ids.append(a)
            else:
                raise TypeError("oft.serve.MultiAdapterModel: adapter_ids holds "
                                f"{type(a).__name__} {a!r}; expected an adapter name, index or "
                                "None")
        return _slot_ids("oft.serve.MultiAdapterModel: adapter_ids",
                         torch.tensor(ids, dtype=torch.int64), len(self.adapters))

    @contextlib.contextmanager
    def using(self, adapter_ids):
        """Every forward inside the block routes each request to its adapter (see the class)."""
        ids = self._global_ids(adapter_ids).to(torch.int64) + 1
        try:
            for layer, table in self.layers.values():
                layer.ids = table[ids]
            yield self
        finally:
            for layer, _ in self.layers.values():
                layer.ids = None

    def __call__(self, *args, adapter_ids=None, **kwargs):
        if adapter_ids is None:
            return self.model(*args, **kwargs)
        with self.using(adapter_ids):
            return self.model(*args, **kwargs)

    def adapter_bytes(self) -> dict[str, int]:
        """Bytes of R's blocks each adapter keeps resident, over all layers."""
        total = dict.fromkeys(self.adapters, 0)
        for layer, table in self.layers.values():
            for k, name in enumerate(self.adapters):
                slot = int(table[k + 1])
                if slot >= 0:
                    total[name] += layer.rotation.adapter_bytes(slot)
        return total


def _peft_modules():
    try:
        from peft import PeftModel, PeftType
        from peft.tuners.oft import layer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("oft.serve.from_peft needs the 'peft' package (pip install peft)") \
            from error
    return PeftModel, PeftType, layer


def _load_folders(model, adapters):
    """A PeftModel over ``model`` with each folder loaded under its name, by PEFT itself (its
    config parsing, target matching and r/oft_block_size adjustment, as if served alone)."""
    PeftModel, PeftType, _ = _peft_modules()
    from peft import PeftConfig

    if isinstance(adapters, Mapping):
        named = [(str(k), os.fspath(v)) for k, v in adapters.items()]
    else:
        named = [(os.path.basename(os.path.normpath(os.fspath(p))), os.fspath(p)) for p in adapters]
    names = [n for n, _ in named]
    if not named:
        raise ValueError("oft.serve.from_peft: adapters is empty (give PEFT adapter folders)")
    if len(set(names)) != len(names):
        raise ValueError(f"oft.serve.from_peft: adapter names {names} repeat (pass a dict "
                         "name -> folder)")
    for name, path in named:
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ValueError(f"oft.serve.from_peft: adapter {name!r}: {path} has no "
                             "adapter_config.json (expected a folder written by PEFT's "
                             "save_pretrained)")
        # Before PEFT loads anything: PEFT would refuse a mix of methods with its own message.
        peft_type = PeftConfig.from_pretrained(path).peft_type
        if peft_type != PeftType.OFT:
            raise TypeError(f"oft.serve.from_peft: adapter {name!r} ({path}) is PEFT {peft_type}; "
                            "oft.serve serves OFT adapters")
    peft_model = PeftModel.from_pretrained(model, named[0][1], adapter_name=named[0][0])
    for name, path in named[1:]:
        peft_model.load_adapter(path, adapter_name=name)
    return peft_model, names


def from_peft(model: torch.nn.Module, adapters=None, *, storage: torch.dtype | None = None,
              bf16_arithmetic: str = "float") -> MultiAdapterModel:
    """Serves several PEFT OFT adapters of one base model in one batch.

    Either ``model`` is a transformers (or any torch) model and ``adapters`` the PEFT OFT adapter
    folders (``save_pretrained`` output): a dict ``name -> folder``, or a list of folders named
    by their last path component; PEFT loads them onto ``model``. Or ``model`` is a ``PeftModel``
    with the adapters loaded, and ``adapters`` their names (``None``: every adapter it has).
    Each adapter's R is computed once here, in float64, and stored in each layer's bank (the
    base model's dtype: float64, else float32). Folders are the robust choice: a ``PeftModel``
    is consumed (its OFT layers are replaced in place, so it no longer runs as PEFT).
    ``storage`` and ``bf16_arithmetic`` go to every layer's bank (``AdapterBankRotation``).

    Returns a ``MultiAdapterModel`` over the base model (``.model``), whose PEFT OFT ``Linear``
    layers are now ``ServingLinear``. Raises ``TypeError`` for an adapter that is not OFT or a
    layer oft does not serve (Conv2d, Embedding, a non-``nn.Linear`` base, ``fan_in_fan_out``),
    ``ValueError`` for a merged layer or an unknown adapter name, before changing any layer.
    """
    PeftModel, PeftType, layer_module = _peft_modules()
    if isinstance(model, PeftModel):
        peft_model = model
        names = list(peft_model.peft_config) if adapters is None else [str(a) for a in adapters]
        for name in names:
            if name not in peft_model.peft_config:
                raise ValueError(f"oft.serve.from_peft: the PeftModel has no adapter {name!r} "
                                 f"(it has {', '.join(peft_model.peft_config)})")
    else:
        if adapters is None:
            raise ValueError("oft.serve.from_peft: give the adapters (PEFT adapter folders) to "
                             "serve on this model, or pass a PeftModel")
        peft_model, names = _load_folders(model, adapters)
    for name in names:
        peft_type = peft_model.peft_config[name].peft_type
        if peft_type != PeftType.OFT:
            raise TypeError(f"oft.serve.from_peft: adapter {name!r} is PEFT {peft_type}; oft.serve "
                            "serves OFT adapters")
    base_model = peft_model.base_model.model

    plan, unwrapped = [], []
    for qualified, module in base_model.named_modules():
        if not isinstance(module, layer_module.OFTLayer):
            continue
        held = [n for n in names
                if n in module.oft_R or n in getattr(module, "oft_embedding_R", {})]
        if not held:
            # Only adapters that are not served target it: PEFT's forward would apply its
            # active adapter to every token, so the layer goes back to its base.
            unwrapped.append((qualified, module.get_base_layer()))
            continue
        if type(module) is not layer_module.Linear:
            raise TypeError(f"oft.serve.from_peft: {qualified} is a PEFT OFT "
                            f"{type(module).__name__}; oft.serve serves OFT Linear layers only")
        base = module.get_base_layer()
        if type(base) is not torch.nn.Linear or module.fan_in_fan_out:
            raise TypeError(f"oft.serve.from_peft: {qualified} wraps a {type(base).__name__}"
                            f"{' with fan_in_fan_out' if module.fan_in_fan_out else ''}; oft.serve "
                            "serves OFT over a plain torch.nn.Linear")
        if module.merged:
            raise ValueError(f"oft.serve.from_peft: {qualified} has adapters merged into its "
                             "weight (unmerge them first)")
        plan.append((qualified, module, base, held))

    layers = {}
    replacements = []
    for qualified, module, base, held in plan:
        serving = ServingLinear(base, capacity=len(held), storage=storage,
                                bf16_arithmetic=bf16_arithmetic)
        table = torch.full((len(names) + 1,), -1, dtype=torch.int32)
        for name in held:
            blocks, shared = peft_rotation_blocks(module.oft_R[name])
            table[names.index(name) + 1] = serving.rotation.add(blocks, shared=shared)
        layers[qualified] = (serving, table)
        replacements.append((qualified, serving))
    for qualified, serving in replacements + unwrapped:
        parent_name, _, child = qualified.rpartition(".")
        parent = base_model.get_submodule(parent_name) if parent_name else base_model
        setattr(parent, child, serving)
    if hasattr(base_model, "peft_config"):  # PEFT's marker on the model it wrapped
        del base_model.peft_config
    return MultiAdapterModel(base_model, names, layers)
