#!/usr/bin/env python3
"""The wheel's run-time dispatch against a native build: one OFT rotation step (oft.torch.rotate
forward + backward: Y = X R(theta), dX and dtheta) timed in the Python module built at each
instruction-set level (OFT_ISA forces one; python/oft/_dispatch.py) and in a module built with
-march=native, the sides interleaved round by round.

OFT_ISA is read when oft is imported, so every (module, level) side is its own child process;
a round runs each side once, in turn, and each child reports the median of --samples timed steps
after --warmup untimed ones. Reported per side: the median over rounds and the spread (min, max).

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/compare_isa_levels.py \\
      --wheel-site /tmp/isa-site --native-python /work/peft-venv/bin/python \\
      --out bench/results/xeon/isa_levels.json

--wheel-site: a folder where the wheel is installed (`pip install --target DIR --no-deps WHEEL`);
its children run with PYTHONPATH=DIR under --python. --native-python: an interpreter whose own oft
is the native build. Shapes: d = 4096, b = 32, N = 2048, float32 (the rotation benchmark's).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from bench_host import cpu_name  # noqa: E402

CHILD = r"""
import json, sys, time
import torch
import oft, oft.torch
d, b, n, threads, warmup, samples = (int(v) for v in sys.argv[1:7])
torch.manual_seed(0)
torch.set_num_threads(threads)
oft.set_num_threads(threads)
x = torch.randn(n, d, requires_grad=True)
theta = (0.05 * torch.randn(d // b, b * (b - 1) // 2)).requires_grad_()
dy = torch.randn(n, d)
times = []
for i in range(warmup + samples):
    t0 = time.perf_counter()
    y = oft.torch.rotate(x, theta, b)
    y.backward(dy)
    t1 = time.perf_counter()
    x.grad = None
    theta.grad = None
    if i >= warmup:
        times.append(t1 - t0)
times.sort()
print(json.dumps({"median_ms": 1e3 * times[len(times) // 2], "level": oft.build_info()["level"],
                  "module": oft.__file__}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel-site", required=True)
    ap.add_argument("--python", default=sys.executable, help="interpreter for the wheel's sides")
    ap.add_argument("--native-python", required=True)
    ap.add_argument("--levels", default="x86-64-v3,x86-64-v4,avx512bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    d, b, n = 4096, 32, 2048

    env = dict(os.environ)
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OFT_ISA", "PYTHONPATH"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = str(args.threads)
    sides = [("native", args.native_python, {})]
    for level in args.levels.split(","):
        sides.append((f"wheel {level}", args.python,
                      {"OFT_ISA": level, "PYTHONPATH": os.path.abspath(args.wheel_site)}))
    results = {name: [] for name, _, _ in sides}
    info = {}
    for r in range(args.rounds):
        for name, python, extra in sides:
            out = subprocess.run(
                [python, "-c", CHILD, str(d), str(b), str(n), str(args.threads),
                 str(args.warmup), str(args.samples)],
                env={**env, **extra}, capture_output=True, text=True, cwd="/")
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(row["median_ms"])
            info[name] = {"level": row["level"], "module": row["module"]}
        print(f"round {r + 1}/{args.rounds}: " +
              ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in results.items()), flush=True)
    summary = {name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                      "rounds_ms": v, **info[name]} for name, v in results.items()}
    base = summary["native"]["median_ms"]
    for name, s in summary.items():
        s["vs_native"] = s["median_ms"] / base
        print(f"{name:22s} {s['median_ms']:8.2f} ms  ({s['min_ms']:.2f}-{s['max_ms']:.2f})  "
              f"{s['vs_native']:.3f}x native  [level {s['level']}]")
    with open(args.out, "w") as f:
        json.dump({"what": "oft.torch.rotate forward + backward, float32, d = 4096, b = 32, "
                           "N = 2048; per side the median of each round's median step",
                   "cpu": cpu_name(), "threads": args.threads, "rounds": args.rounds,
                   "samples": args.samples, "load_before": os.getloadavg()[0],
                   "sides": summary}, f, indent=2)


if __name__ == "__main__":
    main()
