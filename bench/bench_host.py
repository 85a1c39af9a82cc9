"""What the comparison scripts in bench/ share about the machine they measure on."""
import json
import os
import platform
import subprocess
import sys
import tempfile

# Presets of this VM's environment that slow OpenBLAS (and so torch) on AVX-512 CPUs.
OPENBLAS_PRESETS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def without_openblas_presets():
    """This process's environment without OPENBLAS_PRESETS."""
    return {k: v for k, v in os.environ.items() if k not in OPENBLAS_PRESETS}


def restart_without_openblas_presets():
    """Re-executes the running script without OPENBLAS_PRESETS, if any is set: call it before
    torch (and so OpenBLAS) is imported."""
    if any(k in os.environ for k in OPENBLAS_PRESETS):
        os.execve(sys.executable, [sys.executable] + sys.argv, without_openblas_presets())


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def measuring_env(threads):
    """The environment benchmarks run in: this one without OPENBLAS_PRESETS, OMP_NUM_THREADS =
    threads, OpenMP threads that wait passively."""
    env = without_openblas_presets()
    env["OMP_NUM_THREADS"] = str(threads)
    env["OMP_WAIT_POLICY"] = "passive"
    return env


def run_benchmark_json(binary, args, env):
    """Runs the Google Benchmark program `binary` with `args` in `env` and returns its JSON
    report; a failed run ends the script with the program's stderr."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [binary, *args, f"--benchmark_out={out.name}", "--benchmark_out_format=json"]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{binary} failed ({proc.returncode}):\n{proc.stderr}")
        with open(out.name) as f:
            return json.load(f)
