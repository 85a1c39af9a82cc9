#!/usr/bin/env python3
"""oft's AVX2 build against the AVX2 targets, beside torch, in one interleaved run.

The targets (fp32, d = 4096, b = 32, N = 2048, 2 threads; floors from this run's own FMA peak and
stream rate):
  rotation step (Cayley-Neumann k = 3: set_generators + apply + backward)  >= 55% of its compute
      floor, 3 x 2 N d b flops at the AVX2 FMA peak
  apply in place                                  >= 70% of max(compute floor, 2 N d x 4 bytes at
      the in-place stream rate)
  OFT layer step (n_out = d, k = 4)               within 2% of its base GEMM step
and torch's tuned step (bench/compare_torch.py's "tuned": one bmm on the (r, N, b) layout) beside
oft's.

Each round runs, in turn: bench_roofline (AVX2 FMA peak, in-place stream), compare_torch.py (torch
then oft's step), bench_rotation (apply in place and out of place) and bench_layer (base GEMM step
and OFT layer step); the report takes each figure's median over the rounds, so slow drift of a
shared machine falls on every side alike.

On an AVX2-only CPU these are the real figures. On a CPU with AVX-512 the run is a proxy, and the
output says so: oft's x86-64-v3 build still runs AVX2 code, torch is held to AVX2
(ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2) and OpenBLAS,
which bench_layer's base GEMM uses, to its Haswell (AVX2) kernels (OPENBLAS_CORETYPE=Haswell), but
the caches, memory and ports are that CPU's, not an AVX2 machine's.

Build (the benchmarks of the AVX2 code):
  cmake -S . -B build-x86-64-v3-bench -DCMAKE_BUILD_TYPE=Release -DOFT_MARCH=x86-64-v3 \\
      -DOFT_BUILD_BENCH=ON -DOFT_BUILD_TESTS=OFF -DOFT_BUILD_EXAMPLES=OFF -DOFT_ENABLE_CUDA=OFF
  cmake --build build-x86-64-v3-bench -j2 --target bench_rotation bench_roofline bench_layer
Run (a Python with torch, e.g. the venv of scripts/peft_venv.sh):
  build/peft-venv/bin/python bench/compare_avx2.py --build build-x86-64-v3-bench \\
      --out bench/results/<machine>/avx2_targets.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_host import cpu_name, measuring_env, run_benchmark_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, B, N, K_STEP, K_LAYER = 4096, 32, 2048, 3, 4
STEP_FLOPS = 3 * 2 * N * D * B          # apply, dX and G: one 2 N d b product each
APPLY_FLOPS = 2 * N * D * B
APPLY_BYTES = 2 * N * D * 4             # in place: X read once, Y written once
TARGETS = {"step_of_floor": 0.55, "apply_of_floor": 0.70, "layer_over_base": 0.02}
TORCH_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
              "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def google_benchmark(binary, pattern, env, min_time, repetitions):
    """{run name: median real time in ms, plus its user counters} of one Google Benchmark run."""
    report = run_benchmark_json(
        binary, [f"--benchmark_filter={pattern}", f"--benchmark_min_time={min_time}",
                 f"--benchmark_repetitions={repetitions}",
                 "--benchmark_enable_random_interleaving=true"], env)
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    runs = {}
    for bm in report["benchmarks"]:
        if bm.get("run_type") != "iteration" or bm.get("error_occurred"):
            continue
        runs.setdefault(bm["run_name"], []).append(bm)
    result = {}
    for name, items in runs.items():
        times = [b["real_time"] * scale[b["time_unit"]] for b in items]
        result[name] = {"ms": statistics.median(times)}
        for counter in ("GFLOP", "GB"):
            if counter in items[0]:
                result[name][counter] = statistics.median(b[counter] for b in items)
    return result


def one_round(a, proxy, tmp):
    env = measuring_env(a.threads)
    fig = {}
    roof = google_benchmark(os.path.join(a.build, "bench", "bench_roofline"),
                            f"^(BM_FmaPeak<float>|BM_StreamScaleInPlace)/threads:{a.threads}/",
                            env, 0.3, 3)
    fig["fma_peak_gflops"] = roof[f"BM_FmaPeak<float>/threads:{a.threads}/real_time"]["GFLOP"]
    fig["stream_in_place_gbs"] = roof[f"BM_StreamScaleInPlace/threads:{a.threads}/real_time"]["GB"]

    torch_env = dict(env, **(TORCH_AVX2 if proxy else {}))
    torch_json = os.path.join(tmp, "compare_torch.json")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare_torch.py"),
                    "--shapes", f"{D}x{B}x{N}", "--k", str(K_STEP), "--methods", "neumann",
                    "--threads", str(a.threads), "--binary",
                    os.path.join(a.build, "bench", "bench_rotation"), "--out", torch_json],
                   env=torch_env, check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(torch_json))
    row = report["table"][0]
    fig["torch_tuned_step_ms"] = row["torch_tuned_ms"]
    fig["torch_stock_step_ms"] = row["torch_stock_ms"]
    fig["oft_step_ms"] = row["oft_ms"]
    fig["torch_cpu_capability"] = report.get("torch_cpu_capability")

    rot = google_benchmark(os.path.join(a.build, "bench", "bench_rotation"),
                           f"^BM_Apply(OutOfPlace)?/b:{B}/d:{D}/N:{N}/", env, 0.5, 5)
    fig["apply_in_place_ms"] = rot[f"BM_Apply/b:{B}/d:{D}/N:{N}/real_time"]["ms"]
    fig["apply_out_of_place_ms"] = rot[f"BM_ApplyOutOfPlace/b:{B}/d:{D}/N:{N}/real_time"]["ms"]

    layer_env = dict(env, OPENBLAS_CORETYPE="Haswell") if proxy else env
    shape = f"d:{D}/n_out:{D}/b:{B}/N:{N}/k:{K_LAYER}"
    layer = google_benchmark(os.path.join(a.build, "bench", "bench_layer"),
                             f"^(BM_BaseGemmStep|BM_OftLayerStep)/{shape}/", layer_env, 0.5, 3)
    fig["base_gemm_step_ms"] = layer[f"BM_BaseGemmStep/{shape}/real_time"]["ms"]
    fig["oft_layer_step_ms"] = layer[f"BM_OftLayerStep/{shape}/real_time"]["ms"]
    return fig


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build", required=True,
                   help="a build tree with -DOFT_MARCH=x86-64-v3 benchmarks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="JSON output")
    a = p.parse_args()
    for name in ("bench_roofline", "bench_rotation", "bench_layer"):
        if not os.path.isfile(os.path.join(a.build, "bench", name)):
            raise SystemExit(f"compare_avx2.py: --build {a.build}: no bench/{name} (see --help)")
    flags = cpu_flags()
    if "avx2" not in flags or "fma" not in flags:
        raise SystemExit("compare_avx2.py: this CPU has no AVX2 + FMA")
    proxy = "avx512f" in flags
    print(f"[compare_avx2] {cpu_name()}: "
          + ("AVX-512 CPU: a PROXY run (AVX2 code on a CPU that is not AVX2-only)" if proxy
             else "AVX2-only CPU"), flush=True)

    rounds = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            print(f"[compare_avx2] round {i + 1}/{a.rounds}", flush=True)
            rounds.append(one_round(a, proxy, tmp))
    load_after = os.getloadavg()
    med = {key: statistics.median(r[key] for r in rounds)
           for key in rounds[0] if isinstance(rounds[0][key], (int, float))}

    step_floor_ms = STEP_FLOPS / (med["fma_peak_gflops"] * 1e9) * 1e3
    apply_compute_ms = APPLY_FLOPS / (med["fma_peak_gflops"] * 1e9) * 1e3
    apply_memory_ms = APPLY_BYTES / (med["stream_in_place_gbs"] * 1e9) * 1e3
    apply_floor_ms = max(apply_compute_ms, apply_memory_ms)
    result = {
        "step_of_floor": step_floor_ms / med["oft_step_ms"],
        "apply_of_floor": apply_floor_ms / med["apply_in_place_ms"],
        "layer_over_base": med["oft_layer_step_ms"] / med["base_gemm_step_ms"] - 1.0,
        "torch_tuned_over_oft_step": med["torch_tuned_step_ms"] / med["oft_step_ms"],
    }
    met = {
        "step_of_floor": result["step_of_floor"] >= TARGETS["step_of_floor"],
        "apply_of_floor": result["apply_of_floor"] >= TARGETS["apply_of_floor"],
        "layer_over_base": result["layer_over_base"] <= TARGETS["layer_over_base"],
    }
    print()
    print(f"AVX2 FMA peak {med['fma_peak_gflops']:.1f} GFLOP/s, in-place stream "
          f"{med['stream_in_place_gbs']:.1f} GB/s ({a.threads} threads; medians of "
          f"{a.rounds} rounds)")
    print(f"rotation step k={K_STEP}: oft {med['oft_step_ms']:.2f} ms, floor "
          f"{step_floor_ms:.2f} ms: "
          f"{100 * result['step_of_floor']:.0f}% (target >= {100 * TARGETS['step_of_floor']:.0f}%: "
          f"{'met' if met['step_of_floor'] else 'NOT met'});"
          f" torch tuned {med['torch_tuned_step_ms']:.2f} ms "
          f"({result['torch_tuned_over_oft_step']:.2f}x oft),"
          f" stock {med['torch_stock_step_ms']:.2f} ms")
    print(f"apply in place: {med['apply_in_place_ms']:.2f} ms, floor max({apply_compute_ms:.2f}, "
          f"{apply_memory_ms:.2f}) ms: {100 * result['apply_of_floor']:.0f}% (target >= "
          f"{100 * TARGETS['apply_of_floor']:.0f}%: "
          f"{'met' if met['apply_of_floor'] else 'NOT met'}); out of place "
          f"{med['apply_out_of_place_ms']:.2f} ms")
    print(f"layer step k={K_LAYER}: OFT {med['oft_layer_step_ms']:.1f} ms, base GEMM "
          f"{med['base_gemm_step_ms']:.1f} ms: {100 * result['layer_over_base']:+.1f}% (target "
          f"<= +{100 * TARGETS['layer_over_base']:.0f}%: "
          f"{'met' if met['layer_over_base'] else 'NOT met'})")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if proxy:
        print("PROXY: an AVX-512 CPU running AVX2 code; the targets name an AVX2-only CPU")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"cpu": cpu_name(), "proxy": proxy, "threads": a.threads,
                       "shape": {"d": D, "b": B, "N": N, "k_step": K_STEP, "k_layer": K_LAYER},
                       "targets": TARGETS, "result": result, "met": met, "medians": med,
                       "floors_ms": {"step": step_floor_ms, "apply_compute": apply_compute_ms,
                                     "apply_memory": apply_memory_ms},
                       "rounds": rounds, "loadavg_before": load_before,
                       "loadavg_after": load_after}, f, indent=2)
        print(f"[compare_avx2] wrote {a.out}")


if __name__ == "__main__":
    main()
