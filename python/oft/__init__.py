"""oft: orthogonal finetuning (OFTv2) kernels from C++, for Python.

- ``oft.Policy``, ``oft.Rotation``: the CPU operator over NumPy arrays or torch tensors (no copies).
- ``oft.torch``: autograd ops (``rotate``, ``rotation_blocks``) and the ``OFTRotation`` module.
- ``oft.peft``: ``accelerate(model)`` runs every PEFT OFT rotation of a model on oft's kernels.
"""
from ._core import (Policy, RotationFloat32, RotationFloat64, get_num_threads,
                    has_bf16_dot_product, has_cuda, set_num_threads)

__all__ = ["Policy", "Rotation", "RotationFloat32", "RotationFloat64", "get_num_threads",
           "set_num_threads", "has_cuda", "has_bf16_dot_product"]
__version__ = "0.1.0"


def _dtype_class(dtype):
    name = str(dtype).replace("torch.", "")
    if name in ("float32", "<class 'numpy.float32'>"):
        return RotationFloat32
    if name in ("float64", "<class 'numpy.float64'>"):
        return RotationFloat64
    raise TypeError(f"oft.Rotation: dtype {dtype!r} is not float32 or float64")


def _writable(name, array):
    # A torch tensor that requires grad must not be written behind autograd's back.
    if getattr(array, "requires_grad", False):
        raise ValueError(f"oft.Rotation: {name} {list(array.shape)} requires grad; oft writes it in "
                         "place outside autograd (use oft.torch.rotate for a differentiable call, "
                         f"or pass {name}.detach())")
    return array


class Rotation:
    """A block-diagonal rotation R = diag(R_1, ..., R_r) of ``features`` = r * ``block_size``.

    Works on NumPy arrays and CPU torch tensors in place (no copies): 2-D, of this operator's
    ``dtype``, unit column stride, any row stride >= the width. A float32 operator also takes
    bfloat16 activations (x, y, dy, dx in torch.bfloat16; theta and dtheta stay float32), computed
    as ``bf16_arithmetic`` says (``"float"`` or ``"dot_product"``, docs/bf16.md). ``policy`` is
    an ``oft.Policy`` (default ``Policy.cayley_neumann(3)``, the map of PEFT's default of 5
    Neumann terms).

        rot = oft.Rotation(4096, 32, dtype="float32")
        rot.set_generators(theta)          # theta: [r, b(b-1)/2]
        rot.apply(x, y)                    # y = x R (y may be x)
        rot.backward(x, dy, dx, dtheta)    # dx = dy R^T, dtheta = d<dy, x R>/dtheta (None skips)
    """

    def __init__(self, features, block_size, *, shared=False, policy=None, dtype="float32"):
        cls = _dtype_class(dtype)
        self._op = cls(features, block_size, shared,
                       policy if policy is not None else Policy.cayley_neumann(3))

    def __getattr__(self, name):  # features, block_size, blocks, generators, shared, policy, ...
        return getattr(self._op, name)

    def __repr__(self):
        return (f"oft.Rotation(features={self._op.features}, block_size={self._op.block_size}, "
                f"shared={self._op.shared}, policy={self._op.policy})")

    @property
    def bf16_arithmetic(self):
        return self._op.bf16_arithmetic

    @bf16_arithmetic.setter
    def bf16_arithmetic(self, value):
        self._op.bf16_arithmetic = value

    def set_generators(self, theta):
        self._op.set_generators(theta)

    def apply(self, x, y, transposed=False):
        self._op.apply(x, _writable("y", y), transposed)

    def apply_inverse(self, x, y, transposed=False):
        self._op.apply_inverse(x, _writable("y", y), transposed)

    def backward(self, x, dy, dx, dtheta):
        self._op.backward(x, dy, None if dx is None else _writable("dx", dx),
                          None if dtheta is None else _writable("dtheta", dtheta))

    def rotation_blocks(self, out):
        self._op.rotation_blocks(_writable("out", out))
