#!/usr/bin/python3
"""Key figures from the benchmark JSON files of one run (default bench/results/latest/, or
bench/results/smoke/; --dir bench/results/zen3 for a kept baseline).

  - this machine's ceilings (bench_roofline): FMA peak, streaming bandwidth, large-GEMM rate
  - rotation at d=4096, b=32, N=2048: apply, backward, apply+backward medians, GFLOP/s, GB/s and
    % of the roofline min(FMA peak, bandwidth x flops/byte), flops/byte from the same formula
    (bench_common.hpp) as the counters; the whole step per policy; theta -> R per policy
  - OFT layer step vs the bare base GEMM step (overhead %) and vs the weight-centric step
  - expressions: matrix-free vs forming R, few tokens
  - PyTorch vs oft (compare_torch.json)

Medians of the repetitions when the runs were repeated (run_all.sh: 5), else the mean of the runs.
Run: /usr/bin/python3 bench/summarize.py [--smoke | --dir DIR]
"""
import argparse
import csv
import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


class Report:
    """Benchmarks of one JSON file by run name (name without the aggregate suffix)."""

    def __init__(self, path):
        self.path = path
        self.runs, self.context, self.errors = {}, {}, []
        if not os.path.exists(path):
            return
        with open(path) as f:
            data = json.load(f)
        self.context = data.get("context", {})
        plain = {}
        for bm in data.get("benchmarks", []):
            name = bm.get("run_name", bm["name"])
            if bm.get("error_occurred"):
                self.errors.append(f"{name}: {bm.get('error_message')}")
                continue
            if bm.get("aggregate_name") == "median":
                self.runs[name] = bm
            elif bm.get("run_type", "iteration") == "iteration":
                plain.setdefault(name, []).append(bm)
        for name, bms in plain.items():  # no aggregates: average the plain runs
            if name in self.runs:
                continue
            avg = dict(bms[0])
            for key, value in bms[0].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    avg[key] = statistics.mean(b[key] for b in bms)
            self.runs[name] = avg

    def __bool__(self):
        return bool(self.runs)

    def get(self, name):
        return self.runs.get(name) or self.runs.get(name + "/real_time")

    def ms(self, name):
        bm = self.get(name)
        return bm["real_time"] * SCALE_MS[bm["time_unit"]] if bm else None

    def counter(self, name, key):
        bm = self.get(name)
        return bm.get(key) if bm else None


def fmt(value, spec=".2f", unit=""):
    return "-" if value is None else f"{value:{spec}}{unit}"


def pct(part, whole):
    return None if part is None or not whole else 100.0 * part / whole


def section(title):
    print()
    print(title)
    print("-" * len(title))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dir", default=None)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    d = a.dir or os.path.join(ROOT, "bench", "results", "smoke" if a.smoke else "latest")
    load = lambda name: Report(os.path.join(d, name + ".json"))
    roof, rot, layer, layer_eigen, expr = (load("bench_roofline"), load("bench_rotation"),
                                           load("bench_layer"), load("bench_layer_eigen"),
                                           load("bench_expressions"))
    print(f"oft benchmark summary from {os.path.relpath(d, ROOT) or '.'}"
          + ("   [SMOKE RUN: short timings on a shared machine, noisy]" if a.smoke else ""))
    ctx = rot.context or roof.context
    if ctx:
        print(f"host {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs @ "
              f"{ctx.get('mhz_per_cpu', '?')} MHz, threads={ctx.get('oft_omp_max_threads', '?')}, "
              f"isa={ctx.get('oft_isa', '?')}, OPENBLAS_CORETYPE={ctx.get('OPENBLAS_CORETYPE')}, "
              f"load average at start {ctx.get('load_avg', '?')}")
    for r in (roof, rot, layer, layer_eigen, expr):
        for e in r.errors:
            print(f"ERROR in {os.path.basename(r.path)}: {e}")

    # ---- ceilings -------------------------------------------------------------------------------
    section("Machine ceilings (bench_roofline)")
    fma32 = [roof.counter(f"BM_FmaPeak<float>/threads:{t}", "GFLOP") for t in (1, 2)]
    fma64 = [roof.counter(f"BM_FmaPeak<double>/threads:{t}", "GFLOP") for t in (1, 2)]
    scale = [roof.counter(f"BM_StreamScaleInPlace/threads:{t}", "GB") for t in (1, 2)]
    copy = [roof.counter(f"BM_StreamScale/threads:{t}", "GB") for t in (1, 2)]
    read = [roof.counter(f"BM_StreamRead/threads:{t}", "GB") for t in (1, 2)]
    gemm = roof.counter("BM_GemmCeiling/n:2048", "GFLOP")
    print(f"  FMA peak fp32        1 thread {fmt(fma32[0], '.1f')}  2 threads {fmt(fma32[1], '.1f')} GFLOP/s")
    print(f"  FMA peak fp64        1 thread {fmt(fma64[0], '.1f')}  2 threads {fmt(fma64[1], '.1f')} GFLOP/s")
    print(f"  scale in place (r+w) 1 thread {fmt(scale[0], '.1f')}  2 threads {fmt(scale[1], '.1f')} GB/s")
    print(f"  scale b = s a        1 thread {fmt(copy[0], '.1f')}  2 threads {fmt(copy[1], '.1f')} GB/s")
    print(f"  read (sum)           1 thread {fmt(read[0], '.1f')}  2 threads {fmt(read[1], '.1f')} GB/s")
    print(f"  sgemm 2048^3 (Eigen/{'BLAS' if 'on' in roof.context.get('oft_gemm_backend', '') else 'own'})"
          f"   {fmt(gemm, '.1f')} GFLOP/s")
    peak = max([v for v in fma32 if v] or [0]) or None
    bandwidth = max([v for v in scale if v] or [0]) or None
    print(f"  roofline uses: compute {fmt(peak, '.1f')} GFLOP/s (best FMA fp32), "
          f"bandwidth {fmt(bandwidth, '.1f')} GB/s (best in-place scale)")

    if gemm and peak and gemm > 1.05 * peak:
        print(f"  WARNING: sgemm ({gemm:.0f} GFLOP/s) beats the measured FMA peak ({peak:.0f}): the FMA "
              "run was disturbed (busy machine?); the roofline below is too low")

    def roofline(flop_per_byte):
        if not peak or not bandwidth or not flop_per_byte:
            return None
        return min(peak, bandwidth * flop_per_byte)

    # ---- rotation -------------------------------------------------------------------------------
    section("Rotation, float, d=4096 b=32 N=2048 (bench_rotation)")
    shape = "b:32/d:4096/N:2048"
    fwd_bwd = None
    for label, name in (("apply (in place)", f"BM_Apply/{shape}"),
                        ("apply (out of place)", f"BM_ApplyOutOfPlace/{shape}"),
                        ("backward (dX, dtheta)", f"BM_Backward/{shape}")):
        t, gf, gb = rot.ms(name), rot.counter(name, "GFLOP"), rot.counter(name, "GB")
        roof_gf = roofline(rot.counter(name, "flop_per_byte"))
        print(f"  {label:22s} {fmt(t, '8.3f')} ms  {fmt(gf, '6.1f')} GFLOP/s  {fmt(gb, '5.1f')} GB/s"
              f"  {fmt(pct(gf, roof_gf), '5.1f')}% of roofline ({fmt(roof_gf, '.0f')} GFLOP/s)")
    t_apply, t_back = rot.ms(f"BM_Apply/{shape}"), rot.ms(f"BM_Backward/{shape}")
    if t_apply and t_back:
        fwd_bwd = t_apply + t_back
    print(f"  apply + backward       {fmt(fwd_bwd, '8.3f')} ms  (R fixed; no theta -> R)")
    print("  full step (set_generators + apply + backward) and theta -> R alone, per policy:")
    policies = ["cayley"] + [f"cayley_neumann/k:{k}" for k in (1, 2, 3, 4, 6)] + ["exponential"]
    for pol in policies:
        step = rot.ms(f"BM_RotationStep/{pol}/d:4096/b:32/N:2048")
        build = rot.ms(f"BM_SetGenerators/{pol}/d:4096/b:32")
        print(f"    {pol:22s} step {fmt(step, '8.3f')} ms   theta->R {fmt(build, '7.3f')} ms")

    section("Rotation grid, N=2048: GFLOP/s and % of roofline (apply | backward)")
    print(f"  {'b':>4s} {'d':>5s}   {'apply':>14s}   {'backward':>14s}")
    for b in (8, 16, 32, 64, 128):
        for dd in (1024, 4096):
            cells = []
            for kind in ("Apply", "Backward"):
                name = f"BM_{kind}/b:{b}/d:{dd}/N:2048"
                gf = rot.counter(name, "GFLOP")
                cells.append(f"{fmt(gf, '5.1f')} {fmt(pct(gf, roofline(rot.counter(name, 'flop_per_byte'))), '4.0f')}%")
            print(f"  {b:4d} {dd:5d}   {cells[0]:>14s}   {cells[1]:>14s}")

    # ---- layer ----------------------------------------------------------------------------------
    for rep, title in ((layer, "bench_layer"), (layer_eigen, "bench_layer_eigen")):
        if not rep:
            continue
        args, k = "d:4096/n_out:4096/b:32/N:2048/k:3", 3  # k = 3: PEFT's default T = 5
        if rep.ms(f"BM_OftLayerStep/{args}") is None:  # results from before k was an argument
            args, k = "d:4096/n_out:4096/b:32/N:2048", 4
        section(f"Layer step, float, d=n_out=4096 b=32 N=2048 k={k} ({title}: "
                f"{rep.context.get('oft_gemm_backend', '?')})")
        base, oft_step, wc = (rep.ms(f"BM_BaseGemmStep/{args}"), rep.ms(f"BM_OftLayerStep/{args}"),
                              rep.ms(f"BM_WeightCentricStep/{args}"))
        base_f, oft_f, wc_f = (rep.ms(f"BM_BaseForward/{args}"), rep.ms(f"BM_OftLayerForward/{args}"),
                               rep.ms(f"BM_WeightCentricForward/{args}"))
        print(f"  base GEMM step     {fmt(base, '9.2f')} ms  ({fmt(rep.counter(f'BM_BaseGemmStep/{args}', 'GFLOP'), '.1f')} GFLOP/s)")
        print(f"  OFT step (input)   {fmt(oft_step, '9.2f')} ms  overhead vs base "
              f"{fmt(pct(oft_step - base, base) if oft_step and base else None, '+.1f')}%")
        print(f"  weight-centric     {fmt(wc, '9.2f')} ms  = "
              f"{fmt(wc / oft_step if wc and oft_step else None, '.2f')}x the input-centric step")
        print(f"  forward only: base {fmt(base_f, '.2f')} ms, OFT {fmt(oft_f, '.2f')} ms "
              f"({fmt(pct(oft_f - base_f, base_f) if oft_f and base_f else None, '+.1f')}%), "
              f"weight-centric {fmt(wc_f, '.2f')} ms")

    # ---- expressions ----------------------------------------------------------------------------
    if expr:
        section("Expressions, one generator, few tokens (bench_expressions; CPU time, 1 thread)")
        print(f"  {'b':>3s} {'rows':>5s}  {'neumann free':>13s} {'form R':>9s}  "
              f"{'cayley free':>12s} {'form R':>9s}   (us)")
        for b in (32, 64):
            for rows in (1, 2, 4, 8, 16, 64):
                vals = [expr.get(n) for n in (f"BM_NeumannMatrixFree/b:{b}/rows:{rows}/k:4",
                                               f"BM_NeumannFormR/b:{b}/rows:{rows}/k:4",
                                               f"BM_CayleyMatrixFree/b:{b}/rows:{rows}",
                                               f"BM_CayleyFormR/b:{b}/rows:{rows}")]
                us = [v["cpu_time"] * SCALE_MS[v["time_unit"]] * 1e3 if v else None for v in vals]
                print(f"  {b:3d} {rows:5d}  {fmt(us[0], '13.2f')} {fmt(us[1], '9.2f')}  "
                      f"{fmt(us[2], '12.2f')} {fmt(us[3], '9.2f')}")

    # ---- torch ----------------------------------------------------------------------------------
    path = os.path.join(d, "compare_torch.json")
    if os.path.exists(path):
        with open(path) as f:
            cmp = json.load(f)
        section(f"PyTorch {cmp.get('torch_version')} vs oft, {cmp.get('threads')} threads "
                "(one rotation step: theta -> R + apply + backward)")
        for row in cmp["table"]:
            label = "exact" if row["method"] == "exact" else f"neumann k={row['k']}"
            print(f"  {row['d']}x{row['b']}x{row['N']} {label:12s} torch stock "
                  f"{fmt(row['torch_stock_ms'], '.2f')} ms, tuned {fmt(row['torch_tuned_ms'], '.2f')} ms,"
                  f" oft {fmt(row['oft_ms'], '.2f')} ms -> oft is {fmt(row['ratio_stock'], '.2f')}x "
                  f"(stock) / {fmt(row['ratio_tuned'], '.2f')}x (tuned) faster")

    # ---- sweep ----------------------------------------------------------------------------------
    path = os.path.join(d, "sweep.csv")
    if os.path.exists(path):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        section(f"Accuracy sweep ({len(rows)} points, {os.path.relpath(path, ROOT)})")
        for b in ("32",):
            for rho in ("0.5", "0.95"):
                sel = [r for r in rows if r["b"] == b and float(r["rho"]) == float(rho)]
                for name in ("cayley", "neumann_k3", "neumann_k4", "exponential", "tolerance_1e-6"):
                    r = next((r for r in sel if r["param"] == name), None)
                    if r:
                        print(f"  b={b} rho={rho:4s} {name:15s} {float(r['time_ms']):8.3f} ms  "
                              f"orth f32 {float(r['orth_err_f32']):.1e}  f64 {float(r['orth_err_f64']):.1e}"
                              f"  |R-Rc| {float(r['dist_cayley_f64']):.1e}")


if __name__ == "__main__":
    main()
