"""What the comparison scripts in bench/ share about the machine they measure on."""
import os
import platform
import sys

# Presets of this VM's environment that slow OpenBLAS (and so torch) on AVX-512 CPUs.
OPENBLAS_PRESETS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def restart_without_openblas_presets():
    """Re-executes the running script without OPENBLAS_PRESETS, if any is set: call it before
    torch (and so OpenBLAS) is imported."""
    if any(k in os.environ for k in OPENBLAS_PRESETS):
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_PRESETS}
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
