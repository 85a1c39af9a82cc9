"""Model files from Python: the library's merge, convert and inspect (include/oft/io/), the same
functions the ``oft`` command-line tool runs, so the tool, C++ and Python give the same files.

PEFT adapter directories (``oft merge``, ``oft unmerge``, ``oft convert``):

    report = oft.merge_model("base_model/", "adapter/", "merged/")
    report = oft.merge_model("merged/", "adapter/", "restored/", unmerge=True)

LyCORIS, kohya sd-scripts and OneTrainer OFT files (one ``.safetensors``), into a diffusers
model folder or a single-file checkpoint (``oft merge`` with such a file), and from one dialect
into another where that is exact (``oft convert --to``):

    report = oft.merge_diffusion("sd15/", "oft_kohya.safetensors", "merged/", blend=0.8)
    report = oft.merge_diffusion("model.safetensors", "ot.safetensors", "merged.safetensors")
    report = oft.convert_dialect("oft_kohya.safetensors", "oft_lycoris.safetensors", to="lycoris")

Any dialect (``oft inspect --json``: the dialect's own report, each module with the uniform
``summary``):

    info = oft.inspect_adapter("adapter/")
    info = oft.inspect_adapter("oft_kohya.safetensors")

Errors are ``ValueError`` for a bad argument or a file that does not hold what it should (with the
library's message, naming the file, tensor and values), ``RuntimeError`` for the file system.
Nothing is written unless everything checked first passed; the output directory appears whole
or not at all.
"""
import importlib
import importlib.util
import json
import numbers
import os

# The model-file functions are their own compiled module, oft._io (one instruction-set level for
# all CPUs: python/CMakeLists.txt), absent from a build made without nlohmann_json.
_io = importlib.import_module("oft._io") if importlib.util.find_spec("oft._io") else None
has_io = _io is not None

__all__ = ["merge_model", "inspect_adapter", "convert_adapter", "merge_diffusion",
           "convert_dialect"]

_DTYPES = ("float32", "float16", "bfloat16")
# What ``oft convert --to`` takes (tools/oft/convert.cpp): "peft" is PEFT's OFT.
_CONVERT_TO = ("peft", "lycoris", "kohya", "onetrainer")


def _need_io(what):
    if not has_io:
        raise RuntimeError(f"oft.{what}: this build of oft has no model-file support (no oft._io: "
                           "nlohmann_json was not found when it was built; Debian: "
                           "nlohmann-json3-dev)")


def _path(what, name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"oft.{what}: {name} must be a path (str or os.PathLike), "
                        f"got {type(value).__name__}")
    return os.fspath(value)


def _number(what, name, value):
    """A real number, or None (the library's "not given"); bool is refused, as True would merge
    at 1 without saying so."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"oft.{what}: {name} must be a number or None, got {type(value).__name__}")
    return float(value)


def _dialect(what, dialect):
    """"" (detect by the keys) or the name, which the library checks (its refusal lists the
    known names)."""
    if dialect is None:
        return ""
    if not isinstance(dialect, str):
        raise TypeError(f"oft.{what}: dialect must be a str or None, got {type(dialect).__name__}")
    return dialect


def _variant(what, variant):
    if variant is not None and not isinstance(variant, str):
        raise TypeError(f"oft.{what}: variant must be a str or None, got {type(variant).__name__}")
    return variant


def _progress(what, progress):
    if progress is not None and not callable(progress):
        raise TypeError(f"oft.{what}: progress must be callable or None, "
                        f"got {type(progress).__name__}")
    return progress


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
    _progress("merge_model", progress)
    return _io.merge_model(_path("merge_model", "base", base),
                             _path("merge_model", "adapter", adapter),
                             _path("merge_model", "out", out), float(strength),
                             _dtype("merge_model", "dtype", dtype, "same"), bool(force),
                             bool(unmerge), progress)


def inspect_adapter(adapter, *, tolerance=1e-6, dialect=None):
    """What ``oft inspect --json`` reports on an adapter of any dialect, as a dict of the same
    schema. A PEFT directory, OFT: PEFT's settings and, per module, the generators, block size,
    rho = ||Q||_2, orthogonality_error and distance_to_cayley (worst and median), whether a
    Neumann series diverges, and the Neumann terms that ``tolerance`` needs; BOFT and HRA
    (``family``): per module m, N and b (BOFT, with rho and the range of boft_s) or r and
    apply_GS (HRA), the numbers and bytes stored, and orthogonality_error. A LyCORIS or kohya
    file (``dialect`` "lycoris-diag-oft", "lycoris-boft" or "kohya-oft" in the report): per
    module the blocks, alpha, the norm constraint and whether it binds, rho and the orthogonality
    of s = 1 and of the blend s = 1/2; a OneTrainer file: the flags (scaled, clipped, CANS), rho
    and the clipped blocks. Every module of every dialect has ``summary``: side ("input" or
    "output"), block_size, constraint, binding, rho, orthogonality_error, traps
    (docs/dialects.md, docs/io.md).

    ``dialect`` (None: detected by the keys) reads the adapter as "peft-oft", "peft-boft",
    "peft-hra", "lycoris", "kohya" or "onetrainer" (``oft inspect --dialect``); ``tolerance``
    only concerns PEFT OFT."""
    _need_io("inspect_adapter")
    return json.loads(_io.inspect_adapter_json(_path("inspect_adapter", "adapter", adapter),
                                                 float(tolerance),
                                                 _dialect("inspect_adapter", dialect)))


def convert_adapter(adapter, out, *, base="", expand_block_share=False, generators_dtype=None,
                    to_current_polynomial=False, allow_change=False, force=False):
    """Rewrites a PEFT OFT adapter (``oft convert``): block_share expanded to one generator per
    block (needs ``base``), generators stored in another dtype, or a legacy (PEFT < 0.18)
    polynomial relabelled as the current one; a conversion that changes R is refused unless
    ``allow_change``. Returns a dict with the largest |R_new - R_old| per module."""
    _need_io("convert_adapter")
    return _io.convert_adapter(
        _path("convert_adapter", "adapter", adapter), _path("convert_adapter", "out", out),
        _path("convert_adapter", "base", base) if base else "", bool(expand_block_share),
        _dtype("convert_adapter", "generators_dtype", generators_dtype, "unchanged"),
        bool(to_current_polynomial), bool(allow_change), bool(force))


def merge_diffusion(base, adapter, out, *, strength=None, blend=None, dtype=None, force=False,
                    dialect=None, variant=None, progress=None):
    """Folds a LyCORIS, kohya sd-scripts or OneTrainer OFT ``adapter`` (one ``.safetensors``)
    into ``base``, a diffusers model folder (unet/, transformer/, text_encoder*/; every other
    file copied) or a single-file checkpoint (SD 1.5, SD 2, SDXL, SD3, FLUX), and writes ``out``:
    a folder for a folder, one file for a file (``oft merge --adapter FILE``; docs/merging.md).

    ``strength`` s merges R(s Q), a rotation for every s (oft's meaning); ``blend`` s merges
    the dialect's own multiplier, the linear blend s R + (1 - s) I that LyCORIS and ComfyUI
    apply, which is no rotation unless s is 0 or 1; None for both is the adapter itself, and
    both at once are refused (ValueError, the library's message). ``dtype`` (None, "float32",
    "float16", "bfloat16" or a torch/NumPy dtype) converts the floating-point tensors;
    ``force`` replaces an existing ``out``; ``dialect`` (None: detected by the keys) is
    "lycoris", "kohya" or "onetrainer"; ``variant`` picks the weights variant to merge in a
    diffusers folder whose components hold several ("fp16" for
    ``diffusion_pytorch_model.fp16.safetensors``), the others' weights files being left out;
    ``progress`` is called after each tensor written with a dict (tensors_done, tensors_total,
    bytes_done, bytes_total, current).

    Returns a dict: dialect (the name ``--dialect`` takes), targets (per adapter module: module,
    tensor, row_begin and row_count (the rows of the base tensor it changed), swap_halves (the
    module was trained on the tensor with its row halves swapped: FLUX's and SD3's final norm
    under diffusers' names)), tensors, files (safetensors written), other_files (copied),
    dropped (with ``variant``: the other variants' weights files, not written), bytes,
    blend_orthogonality_error (with ``blend``: max ||M^T M - I||_2 of the blended blocks; 0
    otherwise). Every check runs before anything is written; a refusal leaves no ``out``.
    """
    _need_io("merge_diffusion")
    what = "merge_diffusion"
    return _io.merge_diffusion(_path(what, "base", base), _path(what, "adapter", adapter),
                                 _path(what, "out", out), _number(what, "strength", strength),
                                 _number(what, "blend", blend),
                                 _dtype(what, "dtype", dtype, "same"), bool(force),
                                 _dialect(what, dialect), _variant(what, variant),
                                 _progress(what, progress))


def convert_dialect(adapter, out, *, to, dialect=None, allow_change=False, force=False,
                    tolerance=1e-6):
    """Rewrites an OFT adapter of one dialect in another where that is exact (``oft convert
    --to``; docs/dialects.md): ``to`` "peft" (a PEFT OFT directory), "lycoris", "kohya" or
    "onetrainer" (a ``.safetensors`` file). PEFT OFT <-> OneTrainer (both rotate the input) and
    kohya <-> LyCORIS are defined; LyCORIS or kohya to the input-side dialects, and BOFT or HRA anywhere,
    are refused (ValueError with the library's reason and measured change). A conversion that
    changes an entry of R by more than ``tolerance`` is refused unless ``allow_change``.
    ``dialect`` (None: detected by the keys) names the source's dialect; ``force`` replaces an
    existing ``out``. Every written file is read back and compared before it is put in place;
    a refusal writes nothing.

    Returns a dict: from, to (dialect names), modules (per module: name, written (its name in
    the new file), change (max |R_new - R_old|), note), max_change, round_trip (the same
    measured on the file read back).
    """
    _need_io("convert_dialect")
    what = "convert_dialect"
    if not isinstance(to, str):
        raise TypeError(f"oft.{what}: to must be a str, got {type(to).__name__}")
    if to not in _CONVERT_TO:
        raise ValueError(f"oft.{what}: to must be one of {', '.join(_CONVERT_TO)}, got {to!r}")
    tolerance = _number(what, "tolerance", tolerance)
    if tolerance is None or not tolerance > 0:
        raise ValueError(f"oft.{what}: tolerance must be a positive number, got {tolerance!r}")
    return _io.convert_dialect(_path(what, "adapter", adapter), _path(what, "out", out), to,
                                 _dialect(what, dialect), bool(allow_change), bool(force),
                                 tolerance)
