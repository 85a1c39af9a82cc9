#!/usr/bin/python3
"""Side by side: one OFT rotation step in PyTorch vs oft, same math, shapes and thread count.

The step (both sides): theta (r x m) -> skew Q -> R (Cayley-Neumann with k terms, or exact Cayley)
-> Y = X R per block (PEFT's orientation, einsum '...rk,rkc->...rc' on X viewed as (N, r, b)) ->
backward for a fixed random upstream gradient dY, giving dX and dtheta.

PyTorch variants
  stock  what PEFT does: Q by index-put into a zero tensor then Q - Q^T; R = I + 2Q + 2Q^2 + ... +
         2Q^k + Q^(k+1) with bmm (PEFT's loop) or R = solve(I - Q, I + Q) (exact, torch.linalg.solve);
         Y = einsum; backward by autograd (Y.backward(dY)); default allocator.
  tuned  the same R, but the apply as one bmm on the (r, N, b) layout (the transposes in and out are
         inside the timed region), and glibc malloc told to keep freed memory (mallopt
         M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), so autograd's per-step 32 MiB buffers are not fresh
         pages each step (first touch costs ~2.7 GB/s on this machine). Nothing is precomputed.
  tuned bf16 (with --bf16)  tuned, with X, dY, Y and dX in bfloat16: theta and R stay float32,
         R is cast to bfloat16 for the bmm (autograd casts its gradient back), so torch's CPU
         bfloat16 bmm does the apply and both backward products. The same split as oft's bf16
         step (float32 theta and R, bfloat16 activations).

oft: BM_RotationStep/<policy> of bench_rotation (set_generators + apply + backward, in a
subprocess with OPENBLAS_CORETYPE unset and OMP_NUM_THREADS = --threads).

Run: /usr/bin/python3 bench/compare_torch.py [--shapes 4096x32x2048,...] [--k 4] [--smoke]
Writes bench/results/latest/compare_torch.json (bench/results/smoke/ with --smoke).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# OPENBLAS_CORETYPE=Haswell (preset in this environment) halves OpenBLAS here; OpenBLAS reads it
# when the library loads, so it must be gone before torch is imported: re-exec without it.
if "OPENBLAS_CORETYPE" in os.environ:
    env = dict(os.environ)
    print(f"[compare_torch] unsetting OPENBLAS_CORETYPE={env.pop('OPENBLAS_CORETYPE')} "
          "(it slows OpenBLAS here) and restarting", flush=True)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# PyTorch implementation
# ------------------------------------------------------------------------------------------------
class TorchRotation:
    def __init__(self, r, b, k, exact):
        self.r, self.b, self.k, self.exact = r, b, k, exact
        rows, cols = torch.triu_indices(b, b, 1)  # (0,1),(0,2),...: SPEC's packed order
        self.rows, self.cols = rows, cols
        self.eye = torch.eye(b)

    def skew(self, theta):
        q = torch.zeros(self.r, self.b, self.b, dtype=theta.dtype)
        q[:, self.rows, self.cols] = theta
        return q - q.transpose(-2, -1)

    def rotation(self, q):
        if self.exact:  # R = (I - Q)^-1 (I + Q)
            return torch.linalg.solve(self.eye - q, self.eye + q)
        # PEFT's loop, written for k: I + 2Q + 2Q^2 + ... + 2Q^k + Q^(k+1)
        r = self.eye.repeat(self.r, 1, 1)
        if self.k == 0:
            return r + q
        r = r + 2.0 * q
        power = q
        for _ in range(2, self.k + 1):
            power = torch.bmm(power, q)
            r = r + 2.0 * power
        power = torch.bmm(power, q)
        return r + power

    def apply_stock(self, x, rot):
        n = x.shape[0]
        return torch.einsum("...rk,rkc->...rc", x.view(n, self.r, self.b), rot).reshape(n, -1)

    def apply_tuned(self, x, rot):
        n = x.shape[0]
        xr = x.view(n, self.r, self.b).transpose(0, 1)  # (r, N, b), strided
        return torch.bmm(xr, rot).transpose(0, 1).reshape(n, -1)


def random_theta(r, b, rho, seed):
    """theta whose every Q has spectral norm exactly rho (computed, then rescaled)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(r, b * (b - 1) // 2, generator=g, dtype=torch.float64) * 2 - 1
    rows, cols = torch.triu_indices(b, b, 1)
    q = torch.zeros(r, b, b, dtype=torch.float64)
    q[:, rows, cols] = theta
    q = q - q.transpose(-2, -1)
    norms = torch.linalg.matrix_norm(q, ord=2)
    return (theta * (rho / norms)[:, None]).float()


def time_torch(d, b, n, k, exact, variant, repeats, warmup, rho=0.5):
    r = d // b
    mod = TorchRotation(r, b, k, exact)
    theta = random_theta(r, b, rho, 7).requires_grad_(True)
    dtype = torch.bfloat16 if variant == "tuned_bf16" else torch.float32
    x = (torch.rand(n, d, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)
    x.requires_grad_(True)
    dy = (torch.rand(n, d, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(dtype)
    apply = mod.apply_stock if variant == "stock" else mod.apply_tuned

    def step():
        theta.grad = None
        x.grad = None
        rot = mod.rotation(mod.skew(theta))
        y = apply(x, rot.to(dtype))
        y.backward(dy)
        return rot, y

    # Checks outside the timed region: R orthogonal enough, stock == tuned apply, gradients exist.
    with torch.no_grad():
        rot = mod.rotation(mod.skew(theta)).double()
        eye = torch.eye(b, dtype=torch.float64)
        orth = torch.linalg.matrix_norm(rot.transpose(-2, -1) @ rot - eye, ord=2).max().item()
        ya = mod.apply_stock(x.float(), rot.float())
        yb = mod.apply_tuned(x.float(), rot.float())
        mismatch = (ya - yb).abs().max().item()
    bound = 1e-3 if exact else 4 * rho ** (k + 1) + 1e-3
    if orth > bound or mismatch > 1e-4:
        raise RuntimeError(f"torch reference failed its checks: orthogonality {orth:.3g} "
                           f"(bound {bound:.3g}), stock/tuned mismatch {mismatch:.3g}")
    step()
    if theta.grad is None or x.grad is None:
        raise RuntimeError("autograd produced no gradient")

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "repeats": repeats, "orthogonality_error": orth}


def set_malloc_reuse(enable):
    """glibc: serve big blocks from the heap and keep freed memory (enable), or restore defaults."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        if enable:
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
        else:  # glibc defaults (dynamic thresholds are not restored, which only matters for stock)
            libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        return True
    except Exception as e:  # pragma: no cover - non-glibc platforms
        print(f"[compare_torch] mallopt unavailable ({e}); tuned = layout change only")
        return False


# ------------------------------------------------------------------------------------------------
# oft side
# ------------------------------------------------------------------------------------------------
def oft_name(d, b, n, k, exact, bf16=False, bf16_float=False):
    """bf16: the default bfloat16 arithmetic (DotProduct where the build has AVX512_BF16);
    bf16_float: the Float arithmetic, a separate benchmark only in builds where they differ."""
    policy = "cayley" if exact else f"cayley_neumann/k:{k}"
    step = ("BM_RotationStepBf16Float" if bf16_float else
            "BM_RotationStepBf16" if bf16 else "BM_RotationStep")
    return f"{step}/{policy}/d:{d}/b:{b}/N:{n}/real_time"


def run_oft(binary, shapes, k, methods, threads, min_time, repetitions, out_json, bf16=False):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env["OMP_NUM_THREADS"] = str(threads)
    extra = [f"{d}x{b}x{n}" for d, b, n in shapes if (d, b, n) != (4096, 32, 2048)]
    if extra:
        env["OFT_BENCH_STEP_SHAPES"] = ",".join(extra)
    if k not in (1, 2, 3, 4, 6):
        env["OFT_BENCH_STEP_K"] = str(k)
    names = [oft_name(d, b, n, k, exact) for d, b, n in shapes for exact in methods]
    if bf16:  # bfloat16 activations: Cayley-Neumann only
        names += [oft_name(d, b, n, k, False, True, float_arithmetic)
                  for d, b, n in shapes if False in methods for float_arithmetic in (False, True)]
    pattern = "^(" + "|".join(name.replace("/real_time", "") for name in names) + ")/"
    cmd = [binary, f"--benchmark_filter={pattern}", f"--benchmark_min_time={min_time}",
           f"--benchmark_repetitions={repetitions}", "--benchmark_report_aggregates_only=true",
           "--benchmark_enable_random_interleaving=true",
           f"--benchmark_out={out_json}", "--benchmark_out_format=json"]
    print("[compare_torch] running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"oft benchmark failed ({proc.returncode}):\n{proc.stderr}")
    with open(out_json) as f:
        report = json.load(f)
    return {name: median_ms(report, name) for name in names}, report.get("context", {})


def median_ms(report, name):
    """Median real time in ms of `name` (aggregate when repeated, else the mean of its runs)."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    plain = []
    for bm in report["benchmarks"]:
        if bm.get("run_name", bm["name"]) != name or bm.get("error_occurred"):
            continue
        if bm.get("aggregate_name") == "median":
            return bm["real_time"] * scale[bm["time_unit"]]
        if bm.get("run_type") == "iteration":
            plain.append(bm["real_time"] * scale[bm["time_unit"]])
    return statistics.mean(plain) if plain else None


# ------------------------------------------------------------------------------------------------
def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        d, b, n = (int(v) for v in item.lower().split("x"))
        if d % b:
            raise SystemExit(f"shape {item}: b={b} does not divide d={d}")
        shapes.append((d, b, n))
    return shapes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="4096x32x2048", help="comma list of d x b x N")
    p.add_argument("--k", type=int, default=4, help="Neumann terms k (PEFT t = k + 2)")
    p.add_argument("--methods", default="neumann,exact", help="neumann, exact or both")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OFT_BENCH_THREADS", 2)))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--oft-min-time", type=float, default=0.5)
    p.add_argument("--oft-repetitions", type=int, default=5)
    p.add_argument("--binary", default=os.path.join(ROOT, "build-bench", "bench", "bench_rotation"))
    p.add_argument("--out", default=None, help="JSON output (default bench/results/latest or /smoke)")
    p.add_argument("--no-oft", action="store_true", help="time PyTorch only")
    p.add_argument("--smoke", action="store_true", help="a few repeats, results under smoke/")
    p.add_argument("--bf16", action="store_true",
                   help="also time oft's step with bfloat16 activations (BM_RotationStepBf16)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleave: run torch then oft this many times, report medians over rounds")
    a = p.parse_args()
    if a.smoke:
        a.repeats, a.warmup, a.oft_min_time, a.oft_repetitions = 3, 1, 0.05, 1
    results_dir = os.path.join(ROOT, "bench", "results", "smoke" if a.smoke else "latest")
    os.makedirs(results_dir, exist_ok=True)
    out = a.out or os.path.join(results_dir, "compare_torch.json")

    shapes = parse_shapes(a.shapes)
    methods = [m.strip() for m in a.methods.split(",")]
    exact_flags = [m == "exact" for m in methods]
    torch.set_num_threads(a.threads)
    print(f"[compare_torch] torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"k={a.k}, repeats={a.repeats}{' (SMOKE: noisy)' if a.smoke else ''}", flush=True)

    load_before = os.getloadavg()
    rounds_rows, rounds_oft, oft_context = [], [], {}
    for round_index in range(max(1, a.rounds)):
        if a.rounds > 1:
            print(f"[compare_torch] round {round_index + 1}/{a.rounds}", flush=True)
        rows = []
        for variant in ("stock", "tuned") + (("tuned_bf16",) if a.bf16 else ()):
            set_malloc_reuse(variant != "stock")
            for d, b, n in shapes:
                for exact in exact_flags:
                    if exact and variant == "tuned_bf16":
                        continue  # the bf16 rows are Cayley-Neumann only, as oft's
                    t = time_torch(d, b, n, a.k, exact, variant, a.repeats, a.warmup)
                    rows.append({"d": d, "b": b, "N": n, "k": a.k, "method": "exact" if exact
                                 else "neumann", "variant": variant, **t})
                    print(f"  torch {variant:5s} d={d} b={b} N={n} "
                          f"{'exact' if exact else f'neumann k={a.k}'}: {t['median_ms']:.2f} ms",
                          flush=True)
        set_malloc_reuse(False)
        rounds_rows.append(rows)
        if not a.no_oft:
            oft_json = out.replace(".json", f"_oft_round{round_index}.json" if a.rounds > 1
                                   else "_oft.json")
            times, oft_context = run_oft(a.binary, shapes, a.k, exact_flags, a.threads,
                                         a.oft_min_time, a.oft_repetitions, oft_json, a.bf16)
            rounds_oft.append(times)
    load_after = os.getloadavg()
    # Medians over rounds (each round's value is already a median of its own repeats).
    rows = []
    for i, row in enumerate(rounds_rows[0]):
        merged = dict(row)
        merged["median_ms"] = statistics.median(r[i]["median_ms"] for r in rounds_rows)
        merged["round_medians_ms"] = [r[i]["median_ms"] for r in rounds_rows]
        rows.append(merged)
    oft_times = {}
    for name in (rounds_oft[0] if rounds_oft else {}):
        values = [t[name] for t in rounds_oft if t.get(name) is not None]
        oft_times[name] = statistics.median(values) if values else None

    table = []
    print()
    header = (f"{'shape (d x b x N)':20s} {'method':12s} {'torch stock':>12s} {'torch tuned':>12s} "
              f"{'oft':>10s} {'stock/oft':>10s} {'tuned/oft':>10s}")
    print(header)
    print("-" * len(header))
    for d, b, n in shapes:
        for exact in exact_flags:
            method = "exact" if exact else "neumann"
            get = lambda v: next(r["median_ms"] for r in rows if (r["d"], r["b"], r["N"],
                                 r["method"], r["variant"]) == (d, b, n, method, v))
            stock, tuned = get("stock"), get("tuned")
            oft_ms = oft_times.get(oft_name(d, b, n, a.k, exact))
            entry = {"d": d, "b": b, "N": n, "k": a.k, "method": method, "torch_stock_ms": stock,
                     "torch_tuned_ms": tuned, "oft_ms": oft_ms,
                     "ratio_stock": stock / oft_ms if oft_ms else None,
                     "ratio_tuned": tuned / oft_ms if oft_ms else None,
                     "ratio_best_torch": min(stock, tuned) / oft_ms if oft_ms else None}
            table.append(entry)
            label = "exact" if exact else f"neumann k={a.k}"
            fmt = lambda v, spec: format(v, spec) if v is not None else "-"
            print(f"{f'{d} x {b} x {n}':20s} {label:12s} {stock:10.2f}ms {tuned:10.2f}ms "
                  f"{fmt(oft_ms, '8.2f')}ms {fmt(entry['ratio_stock'], '9.2f')}x "
                  f"{fmt(entry['ratio_tuned'], '9.2f')}x")
            if a.bf16 and not exact:
                bf16_ms = oft_times.get(oft_name(d, b, n, a.k, False, True))
                entry["oft_bf16_ms"] = bf16_ms
                entry["ratio_fp32_over_bf16"] = oft_ms / bf16_ms if oft_ms and bf16_ms else None
                torch_bf16 = get("tuned_bf16")
                entry["torch_tuned_bf16_ms"] = torch_bf16
                entry["ratio_torch_bf16_over_oft_bf16"] = torch_bf16 / bf16_ms if bf16_ms else None
                print(f"{'':20s} {'  torch bf16':12s} {'':12s} {torch_bf16:10.2f}ms "
                      f"(tuned, bfloat16 activations)   torch bf16 / oft bf16 "
                      f"{fmt(entry['ratio_torch_bf16_over_oft_bf16'], '.2f')}x")
                print(f"{'':20s} {'  oft bf16':12s} {'':12s} {'':12s} {fmt(bf16_ms, '8.2f')}ms "
                      f"{fmt(stock / bf16_ms if bf16_ms else None, '9.2f')}x "
                      f"{fmt(tuned / bf16_ms if bf16_ms else None, '9.2f')}x"
                      f"   fp32/bf16 {fmt(entry['ratio_fp32_over_bf16'], '.2f')}x")
                # The Float arithmetic, where the build also has DotProduct (absent otherwise).
                float_ms = oft_times.get(oft_name(d, b, n, a.k, False, True, True))
                entry["oft_bf16_float_arithmetic_ms"] = float_ms
                if float_ms:
                    print(f"{'':20s} {'  bf16 Float':12s} {'':12s} {'':12s} "
                          f"{fmt(float_ms, '8.2f')}ms {stock / float_ms:9.2f}x "
                          f"{tuned / float_ms:9.2f}x   fp32/bf16 {oft_ms / float_ms:.2f}x")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); "
          f"{max(1, a.rounds)} round(s), torch and oft alternating")
    print("ratio = torch time / oft time (> 1: oft is faster); medians of each side's repeats"
          + ("  [SMOKE settings: noisy]" if a.smoke else ""))

    with open(out, "w") as f:
        json.dump({"smoke": a.smoke, "threads": a.threads, "torch_version": torch.__version__,
                   "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "python": platform.python_version(), "machine": platform.machine(),
                   "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                   "torch_runs": rows, "table": table, "oft_context": oft_context,
                   "rounds": max(1, a.rounds), "loadavg_before": load_before,
                   "loadavg_after": load_after, "oft_rounds": rounds_oft}, f, indent=2)
    print(f"[compare_torch] wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
