"""Which compiled module is ``oft._core``: the instruction-set level chosen at ``import oft``.

The extension is built once per level into its own shared object (python/CMakeLists.txt):
``_core_x86_64_v3`` (AVX2 + FMA), ``_core_x86_64_v4`` (AVX-512 F/BW/CD/DQ/VL) and
``_core_avx512bf16`` (x86-64-v4 plus AVX512_BF16, the vdpbf16ps kernels) in a wheel;
``_core_native`` or ``_core_default`` in a one-level developer build. Separate shared objects,
because the kernels are header-only inline templates: one object compiled at two levels would keep
one arbitrary copy of each.

The best level that this build has and this CPU runs is imported, judged from the flags of
/proc/cpuinfo (Linux; they are what the kernel enabled, e.g. AVX-512 only where it saves the
registers). ``OFT_ISA=<level>`` forces one and is refused, naming the missing flags, where the CPU
lacks it. Nothing here runs a kernel; ``oft.build_info()`` reports the choice.
"""
import importlib
import importlib.util
import os
import platform
import sys

# Best first. The CPU flags each level's code may use, as /proc/cpuinfo spells them (GCC's
# -march=x86-64-v3 also emits BMI1/2, LZCNT (abm), MOVBE and F16C instructions).
_X86_64_V3 = ("sse4_1", "sse4_2", "ssse3", "popcnt", "cx16", "avx", "avx2", "fma", "f16c", "bmi1",
              "bmi2", "abm", "movbe")
_X86_64_V4 = _X86_64_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
REQUIRED_FLAGS = {
    "avx512bf16": _X86_64_V4 + ("avx512_bf16",),
    "x86-64-v4": _X86_64_V4,
    "x86-64-v3": _X86_64_V3,
    # One-level developer builds: compiled for the machine that built them (native) or the
    # compiler's default target; no flags are checked.
    "native": (),
    "default": (),
}
LEVELS = tuple(REQUIRED_FLAGS)


def module_name(level):
    return "oft._core_" + level.replace("-", "_")


def built_levels():
    """The levels whose module this installation has, best first."""
    return tuple(level for level in LEVELS if importlib.util.find_spec(module_name(level)))


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none to read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def missing_flags(level, flags):
    """The flags ``level`` needs that ``flags`` lacks (none for native and default)."""
    if flags is None:
        return ()
    return tuple(flag for flag in REQUIRED_FLAGS[level] if flag not in flags)


def choose(built, flags, forced):
    """(level, how) for a build with levels ``built``, a CPU with ``flags`` (None: unknown) and
    ``forced`` (OFT_ISA, "" for none). Raises ValueError for an unknown level and RuntimeError for
    one this build or CPU lacks."""
    if not built:
        raise RuntimeError("oft: no compiled module (oft/_core_<level>.so) in this installation; "
                           "reinstall the package")
    forced = forced.strip()
    if forced and forced != "auto":
        if forced not in REQUIRED_FLAGS:
            raise ValueError(f"oft: OFT_ISA={forced!r} is not a level; the levels are "
                             f"{', '.join(LEVELS)} (or auto)")
        if forced not in built:
            raise RuntimeError(f"oft: OFT_ISA={forced}: this build has no {forced} module; it has "
                               f"{', '.join(built)}")
        missing = missing_flags(forced, flags)
        if missing:
            raise RuntimeError(f"oft: OFT_ISA={forced}: this CPU lacks the flags {forced} needs: "
                               f"{' '.join(missing)} (absent from /proc/cpuinfo)")
        return forced, "forced by OFT_ISA"
    if flags is None:
        # No /proc/cpuinfo to read: the most widely runnable level this build has.
        return built[-1], "CPU flags unknown (no /proc/cpuinfo): the lowest level of this build"
    for level in built:
        if not missing_flags(level, flags):
            return level, "the best level this CPU runs"
    lowest = built[-1]
    raise RuntimeError(f"oft: this CPU runs none of this build's levels ({', '.join(built)}); "
                       f"{lowest} needs {' '.join(missing_flags(lowest, flags))}, absent from "
                       "/proc/cpuinfo")


def load():
    """Imports the chosen module, registers it as ``oft._core`` and returns (module, info)."""
    built = built_levels()
    flags = cpu_flags()
    level, how = choose(built, flags, os.environ.get("OFT_ISA", ""))
    module = importlib.import_module(module_name(level))
    sys.modules["oft._core"] = module
    info = dict(module._build)
    info.update(level=level, chosen=how, levels_built=built, machine=platform.machine(),
                cpu_levels=tuple(lv for lv in built if flags is not None
                                 and not missing_flags(lv, flags)))
    return module, info
