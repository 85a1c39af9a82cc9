"""oft: orthogonal finetuning (OFTv2) kernels from C++, for Python.

- ``oft.Parameterization`` (also ``oft.Policy``), ``oft.Rotation``: the CPU operator over NumPy
  arrays or torch tensors (no copies).
- ``oft.torch``: autograd ops (``rotate``, ``rotation_blocks``), the ``OFTRotation`` module and
  ``OFTConv`` (oft's convolution OFT).
- ``oft.lycoris``: LyCORIS's diag-OFT and BOFT modules (and kohya's OFT), trainable, on those ops;
  ``oft.onetrainer``: OneTrainer's OFT module.
- ``oft.peft``: ``accelerate(model)`` runs every PEFT OFT rotation of a model on oft's kernels.
- ``oft.serve``: many PEFT OFT adapters served in one batch, each request through its own
  (``from_peft(model, adapters)``, ``ServingLinear``, ``AdapterBankRotation``; forward only).
- ``oft.merge_model``, ``oft.inspect_adapter``, ``oft.convert_adapter``, ``oft.merge_diffusion``,
  ``oft.convert_dialect`` (``oft.io``): the library's model-file functions, the ones the ``oft``
  tool runs (PEFT directories; LyCORIS, kohya and OneTrainer files into diffusion checkpoints).
- ``oft.build_info()``: which compiled kernels run (the instruction-set level chosen at import,
  ``OFT_ISA`` to force one; oft/_dispatch.py).
"""
from ._dispatch import load as _load

# oft._core is the compiled module of the instruction-set level this CPU runs (or OFT_ISA forces):
# oft/_dispatch.py.
_core, _build_info = _load()
from ._core import (Parameterization, Policy, get_num_threads, has_bf16_dot_product, has_cuda,
                    set_num_threads)
from .io import (convert_adapter, convert_dialect, has_io, inspect_adapter, merge_diffusion,
                 merge_model)

__all__ = ["Parameterization", "Policy", "Rotation", "RotationFloat32", "RotationFloat64",
           "get_num_threads", "set_num_threads", "has_cuda", "has_io", "has_bf16_dot_product",
           "dtype_name", "merge_model", "inspect_adapter", "convert_adapter", "merge_diffusion",
           "convert_dialect", "build_info"]
# From include/oft/version.hpp, compiled into the module (pyproject reads the same line).
__version__ = _build_info.get("version", "unknown")


def build_info() -> dict:
    """Which kernels run: ``level`` (the module imported: x86-64-v3, x86-64-v4, avx512bf16, or
    native / default for a one-level developer build), ``chosen`` (how: the best level of the CPU,
    or forced by OFT_ISA), ``levels_built`` (this installation's), ``cpu_levels`` (those this CPU
    runs), ``compiled_flags`` (the instruction-set macros the module was compiled with),
    ``compiler``, ``bf16_dot_product`` (the vdpbf16ps kernels), ``openmp``, ``io`` (the model-file
    functions), ``io_level`` (the one level their module, oft._io, is compiled at; None without
    it), ``cuda``, ``version``, ``machine``."""
    from . import io
    info = dict(_build_info)
    info.update(io=io.has_io, io_level=io._io.level if io.has_io else None,
                cuda=bool(_core.has_cuda))
    return info


def dtype_name(dtype) -> str:
    """The name oft._core takes for a dtype: "float32" for ``torch.float32``, ``numpy.float32``,
    ``numpy.dtype("float32")`` or "float32" (oft._core refuses the names it has no kernels for)."""
    if isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name[len("torch."):]
    import numpy
    return numpy.dtype(dtype).name


def _on_cpu(name, array):
    # A tensor on another device (meta, cuda, ...) named here: oft._core could only say that
    # nanobind cannot read it.
    device = getattr(array, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        raise ValueError(f"oft.Rotation: {name} {list(array.shape)} is on {device}; oft.Rotation "
                         "takes NumPy arrays and CPU tensors (oft.torch.rotate takes CUDA tensors)")
    return array


def _input(name, array):
    _on_cpu(name, array)
    # Broadcast rows (row stride 0, e.g. x.expand(n, d) or np.broadcast_to): the kernels need a
    # row stride >= the width, and an input is only read, so one contiguous copy serves. An
    # output with row stride 0 stays refused (every row would be written to the same memory).
    if callable(getattr(array, "stride", None)):  # a torch tensor
        if array.dim() == 2 and array.shape[0] > 1 and array.stride(0) == 0:
            return array.contiguous()
    elif getattr(array, "ndim", 0) == 2 and array.shape[0] > 1 and array.strides[0] == 0:
        import numpy  # only NumPy arrays get here

        return numpy.ascontiguousarray(array)
    return array


def _writable(name, array):
    _on_cpu(name, array)
    # A torch tensor that requires grad must not be written behind autograd's back.
    if getattr(array, "requires_grad", False):
        raise ValueError(f"oft.Rotation: {name} {list(array.shape)} requires grad; oft writes it in "
                         "place outside autograd (use oft.torch.rotate for a differentiable call, "
                         f"or pass {name}.detach())")
    return array


class Rotation:
    """A block-diagonal rotation R = diag(R_1, ..., R_r) of ``features`` = r * ``block_size``.

    Works on NumPy arrays and CPU torch tensors in place (no copies): 2-D, of this operator's
    ``dtype``, unit column stride, any row stride >= the width (inputs whose rows are one broadcast
    row, row stride 0, are copied once first); inputs may be read-only, outputs must be writable;
    0 rows are fine (``backward`` then writes a zero dtheta). A float32 operator
    also takes bfloat16 activations (x, y, dy, dx in torch.bfloat16; theta and dtheta stay
    float32), computed as ``bf16_arithmetic`` says (``"float"`` or ``"dot_product"``,
    docs/bf16.md). ``policy`` is an ``oft.Parameterization`` (default
    ``Parameterization.cayley_neumann(3)``, the map of PEFT's default of 5 Neumann terms).

        rot = oft.Rotation(4096, 32, dtype="float32")
        rot.set_generators(theta)          # theta: [r, b(b-1)/2]
        rot.apply(x, y)                    # y = x R (y may be x)
        rot.backward(x, dy, dx, dtheta)    # dx = dy R^T, dtheta = d<dy, x R>/dtheta (None skips)
    """

    def __init__(self, features, block_size, *, shared=False, policy=None, dtype="float32"):
        self._op = _core.Rotation(features, block_size, shared,
                                  policy if policy is not None else Parameterization.cayley_neumann(3),
                                  dtype_name(dtype))

    def __getattr__(self, name):  # features, block_size, blocks, generators, shared, policy, ...
        return getattr(self._op, name)

    def __repr__(self):
        return (f"oft.Rotation(features={self._op.features}, block_size={self._op.block_size}, "
                f"shared={self._op.shared}, policy={self._op.policy}, dtype={self._op.dtype})")

    @property
    def bf16_arithmetic(self):
        return self._op.bf16_arithmetic

    @bf16_arithmetic.setter
    def bf16_arithmetic(self, value):
        self._op.bf16_arithmetic = value

    def set_generators(self, theta):
        self._op.set_generators(_on_cpu("theta", theta))

    def apply(self, x, y, transposed=False):
        self._op.apply(_input("x", x), _writable("y", y), transposed)

    def apply_inverse(self, x, y, transposed=False):
        self._op.apply_inverse(_input("x", x), _writable("y", y), transposed)

    def backward(self, x, dy, dx, dtheta):
        self._op.backward(_input("x", x), _input("dy", dy),
                          None if dx is None else _writable("dx", dx),
                          None if dtheta is None else _writable("dtheta", dtheta))

    def rotation_blocks(self, out):
        self._op.rotation_blocks(_writable("out", out))


class RotationFloat32(Rotation):
    """``oft.Rotation(..., dtype="float32")`` with the positional arguments of ``oft._core``."""

    def __init__(self, features, block_size, shared=False, policy=None):
        super().__init__(features, block_size, shared=shared, policy=policy, dtype="float32")


class RotationFloat64(Rotation):
    """``oft.Rotation(..., dtype="float64")`` with the positional arguments of ``oft._core``."""

    def __init__(self, features, block_size, shared=False, policy=None):
        super().__init__(features, block_size, shared=shared, policy=policy, dtype="float64")
