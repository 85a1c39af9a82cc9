"""Model files from Python: the library's merge, convert and inspect (include/oft/io/), the same
functions the ``oft`` command-line tool runs, so the tool, C++ and Python give the same files.

    report = oft.merge_model("base_model/", "adapter/", "merged/")
    report = oft.merge_model("merged/", "adapter/", "restored/", unmerge=True)
    info = oft.inspect_adapter("adapter/")

Errors are ``ValueError`` for a bad argument or a file that does not hold what it should (with the
library's message, naming the file, tensor and values), ``RuntimeError`` for the file system.
Nothing is written unless everything checked first passed; the output directory appears whole
or not at all.
"""
import json
import os

from . import _core

__all__ = ["merge_model", "inspect_adapter", "convert_adapter"]

_DTYPES = ("float32", "float16", "bfloat16")


def _need_io(what):
    if not _core.has_io:
        raise RuntimeError(f"oft.{what}: this build of oft._core has no model-file support "
                           "(nlohmann_json was not found when it was built; Debian: "
                           "nlohmann-json3-dev)")


def _path(what, name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"oft.{what}: {name} must be a path (str or os.PathLike), "
                        f"got {type(value).__name__}")
    return os.fspath(value)


def _dtype(what, name, dtype, none_name):
    if dtype is None:
        return none_name
    from . import dtype_name
    try:
        text = dtype_name(dtype)
    except TypeError:
        text = str(dtype)
    if text not in _DTYPES:
        raise ValueError(f"oft.{what}: {name} must be None or one of {', '.join(_DTYPES)}, "
                         f"got {dtype!r}")
    return text


def merge_model(base, adapter, out, *, strength=1.0, dtype=None, force=False, unmerge=False,
                progress=None):
    """Folds the PEFT OFT, BOFT or HRA ``adapter`` into the Hugging Face model directory ``base``
    and writes the merged model to ``out`` (``oft merge``); with ``unmerge=True`` takes it out
    again with the true inverse (``oft unmerge``).

    ``strength`` merges R(strength * Q) (OFT only: BOFT and HRA refuse any other value than 1,
    as PEFT defines none); ``dtype`` (None, "float32", "float16", "bfloat16" or a
    torch/NumPy dtype) converts the floating-point tensors, None keeps each tensor's own;
    ``force`` replaces an existing ``out``; ``progress`` is called after each tensor written with
    a dict (tensors_done, tensors_total, bytes_done, bytes_total, current). Returns a dict:
    tensors, shards, adapted (tensor names), quantized (per-layer requantization errors),
    other_files, bytes.
    """
    _need_io("merge_model")
    if progress is not None and not callable(progress):
        raise TypeError(f"oft.merge_model: progress must be callable or None, "
                        f"got {type(progress).__name__}")
    return _core.merge_model(_path("merge_model", "base", base),
                             _path("merge_model", "adapter", adapter),
                             _path("merge_model", "out", out), float(strength),
                             _dtype("merge_model", "dtype", dtype, "same"), bool(force),
                             bool(unmerge), progress)


def inspect_adapter(adapter, *, tolerance=1e-6):
    """What ``oft inspect --json`` reports on a PEFT adapter, as a dict of the same schema. OFT:
    PEFT's settings and, per module, the generators, block size, rho = ||Q||_2,
    orthogonality_error and distance_to_cayley (worst and median), whether a Neumann series
    diverges, and the Neumann terms that ``tolerance`` needs. BOFT and HRA (``family``): per
    module m, N and b (BOFT, with rho and the range of boft_s) or r and apply_GS (HRA), the
    numbers and bytes stored, and orthogonality_error (docs/io.md)."""
    _need_io("inspect_adapter")
    return json.loads(_core.inspect_adapter_json(_path("inspect_adapter", "adapter", adapter),
                                                 float(tolerance)))


def convert_adapter(adapter, out, *, base="", expand_block_share=False, generators_dtype=None,
                    to_current_polynomial=False, allow_change=False, force=False):
    """Rewrites a PEFT OFT adapter (``oft convert``): block_share expanded to one generator per
    block (needs ``base``), generators stored in another dtype, or a legacy (PEFT < 0.18)
    polynomial relabelled as the current one; a conversion that changes R is refused unless
    ``allow_change``. Returns a dict with the largest |R_new - R_old| per module."""
    _need_io("convert_adapter")
    return _core.convert_adapter(
        _path("convert_adapter", "adapter", adapter), _path("convert_adapter", "out", out),
        _path("convert_adapter", "base", base) if base else "", bool(expand_block_share),
        _dtype("convert_adapter", "generators_dtype", generators_dtype, "unchanged"),
        bool(to_current_polynomial), bool(allow_change), bool(force))
