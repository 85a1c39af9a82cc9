#!/usr/bin/python3
"""Accuracy vs speed of the parameterizations: runs bench_sweep, writes a CSV and a plot.

Grid (see bench_sweep.cpp): exact Cayley, Cayley-Neumann k = 0..8, matrix exponential,
tolerance mode (1e-6, exact fallback), Newton-Schulz (2, 3, 5, 8 iterations) and exact Cayley /
Cayley-Neumann k = 4 behind spectral clipping at 0.5 x rho in {0.05, 0.2, 0.5, 0.8, 0.95} x b in {16, 32, 64},
every generator's Q scaled to spectral norm exactly rho. Time = one float rotation step
(theta -> R, apply, backward) at d = 2048, N = 256.

Outputs: bench/results/latest/sweep.csv, bench/results/latest/sweep.json (raw google-benchmark report) and
docs/accuracy_vs_speed.png; with --smoke everything goes to bench/results/smoke/ instead.

Run: /usr/bin/python3 bench/sweep.py [--smoke] [--plot-only]
"""
import argparse
import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ["param", "k", "terms", "rho", "b", "d", "N", "time_ms", "time_cv", "orth_err_f32",
          "orth_err_f64", "dist_cayley_f32", "dist_cayley_f64", "orth_theory", "dist_theory"]
UNFILLED = {"1", "2", "3", "4", "+", "x"}  # line markers: no edge colour
SCALE = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def run_sweep(binary, min_time, repetitions, threads, out_json, bench_filter):
    env = dict(os.environ)
    if env.pop("OPENBLAS_CORETYPE", None) is not None:
        print("[sweep] OPENBLAS_CORETYPE unset for the benchmark (it slows OpenBLAS here)")
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [binary, f"--benchmark_min_time={min_time}", f"--benchmark_repetitions={repetitions}",
           "--benchmark_report_aggregates_only=true", f"--benchmark_out={out_json}",
           "--benchmark_out_format=json", f"--benchmark_filter={bench_filter}"]
    print("[sweep] running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_sweep failed ({proc.returncode}):\n{proc.stderr}")


def read_rows(report_path):
    with open(report_path) as f:
        report = json.load(f)
    runs = {}
    for bm in report["benchmarks"]:
        if bm.get("error_occurred"):
            print(f"[sweep] {bm['name']}: {bm.get('error_message')}", file=sys.stderr)
            continue
        key = bm.get("run_name", bm["name"])
        entry = runs.setdefault(key, {"times": []})
        agg = bm.get("aggregate_name")
        if agg == "median" or (agg is None and bm.get("run_type") == "iteration"):
            entry["bm"] = bm
            entry["times"].append(bm["real_time"] * SCALE[bm["time_unit"]])
        elif agg == "cv":
            entry["cv"] = bm["real_time"]
    rows = []
    for key, entry in runs.items():
        bm = entry.get("bm")
        if bm is None:
            continue
        k = int(bm["k"])
        rows.append({
            "param": bm.get("label") or key.split("/")[1],
            "k": k if k >= 0 else "",
            "terms": int(bm["terms"]),
            "rho": round(bm["rho"], 4),
            "b": int(bm["b"]),
            "d": 2048,
            "N": 256,
            "time_ms": sorted(entry["times"])[len(entry["times"]) // 2],
            "time_cv": entry.get("cv", ""),
            "orth_err_f32": bm["orth_err_f32"],
            "orth_err_f64": bm["orth_err_f64"],
            "dist_cayley_f32": bm["dist_cayley_f32"],
            "dist_cayley_f64": bm["dist_cayley_f64"],
            "orth_theory": bm["orth_theory"] if bm["orth_theory"] >= 0 else "",
            "dist_theory": bm["dist_theory"] if bm["dist_theory"] >= 0 else "",
        })
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow(row)


def plot(rows, path, smoke, note=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    params = []
    for row in rows:
        if row["param"] not in params:
            params.append(row["param"])
    shapes = ["o", "v", "^", "<", ">", "s", "p", "*", "h", "D", "X", "P", "8", "d", "H", "1", "2",
              "3", "4", "+", "x"]
    markers = {p: shapes[i % len(shapes)] for i, p in enumerate(params)}
    rhos = sorted({row["rho"] for row in rows})
    cmap = plt.get_cmap("viridis")
    colour = {rho: cmap(i / max(1, len(rhos) - 1)) for i, rho in enumerate(rhos)}
    blocks = sorted({row["b"] for row in rows})

    fig, axes = plt.subplots(2, len(blocks), figsize=(5.2 * len(blocks), 9), sharey="row",
                             squeeze=False)
    floor = 1e-17  # exact zeros on a log axis
    for col, b in enumerate(blocks):
        for r, (field, title) in enumerate([("orth_err_f32", "float32 (the timed operator)"),
                                            ("orth_err_f64", "float64 (same theta)")]):
            ax = axes[r][col]
            for row in rows:
                if row["b"] != b:
                    continue
                marker = markers[row["param"]]
                ax.scatter(row["time_ms"], max(row[field], floor), marker=marker,
                           color=colour[row["rho"]], s=42, linewidths=0.3,
                           edgecolors=None if marker in UNFILLED else "black")
            ax.set_yscale("log")
            ax.set_title(f"b = {b}: {title}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if col == 0:
                ax.set_ylabel(r"orthogonality error $\max_i \|R_i^T R_i - I\|_2$")
            if r == 1:
                ax.set_xlabel("time of one step (theta->R + apply + backward), ms\n"
                              "d = 2048, N = 256, float32")
    marker_handles = [Line2D([], [], linestyle="", marker=markers[p], color="grey",
                             markeredgecolor="black", label=p) for p in params]
    colour_handles = [Line2D([], [], linestyle="", marker="o", color=colour[rho],
                             label=f"rho = {rho:g}") for rho in rhos]
    fig.legend(handles=marker_handles + colour_handles, loc="center right", fontsize=8,
               frameon=False)
    suptitle = ("OFT parameterizations: orthogonality vs time "
                "(each Q scaled to spectral norm rho)")
    if smoke:
        suptitle += "\nSMOKE RUN: timings are noisy placeholders"
    if note:
        suptitle += "\n" + note
    fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0, 0.85, 0.95))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "build-bench", "bench", "bench_sweep"))
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OFT_BENCH_THREADS", 2)))
    p.add_argument("--filter", default="BM_Sweep", help="google-benchmark filter")
    p.add_argument("--smoke", action="store_true", help="short timings, outputs under smoke/")
    p.add_argument("--plot-only", action="store_true", help="re-plot from the existing JSON")
    p.add_argument("--plot", default=None, help="plot path (default docs/accuracy_vs_speed.png)")
    p.add_argument("--note", default="", help="extra line for the plot title")
    a = p.parse_args()
    if a.smoke:
        a.min_time, a.repetitions = 0.01, 1
    results = os.path.join(ROOT, "bench", "results", "smoke" if a.smoke else "latest")
    os.makedirs(results, exist_ok=True)
    report = os.path.join(results, "sweep.json")
    plot_path = a.plot or (os.path.join(results, "accuracy_vs_speed.png") if a.smoke else
                           os.path.join(ROOT, "docs", "accuracy_vs_speed.png"))
    if not a.plot_only:
        run_sweep(a.binary, a.min_time, a.repetitions, a.threads, report, a.filter)
    rows = read_rows(report)
    rows.sort(key=lambda r: (r["b"], r["rho"], r["param"]))
    csv_path = os.path.join(results, "sweep.csv")
    write_csv(rows, csv_path)
    plot(rows, plot_path, a.smoke, a.note)
    print(f"[sweep] {len(rows)} points -> {os.path.relpath(csv_path, ROOT)}, "
          f"{os.path.relpath(plot_path, ROOT)}{'  [SMOKE: timings noisy]' if a.smoke else ''}")

    # The closed form ||R - R_k||_2 = rho^(k+1) (SPEC section 3) against the measured float64 value.
    neumann = [r for r in rows if r["dist_theory"] != "" and r["dist_theory"] > 1e-13]
    if neumann:
        worst = max(neumann, key=lambda r: abs(r["dist_cayley_f64"] / r["dist_theory"] - 1))
        print(f"  Neumann distance to Cayley vs rho^(k+1): worst relative deviation "
              f"{abs(worst['dist_cayley_f64'] / worst['dist_theory'] - 1):.1e} "
              f"({worst['param']}, rho={worst['rho']}, b={worst['b']})")

    # A few lines for the console: the cheapest parameterization meeting 1e-6 in float64, per rho.
    for b in sorted({r["b"] for r in rows}):
        for rho in sorted({r["rho"] for r in rows}):
            ok = [r for r in rows if r["b"] == b and r["rho"] == rho and r["orth_err_f64"] <= 1e-6]
            if ok:
                best = min(ok, key=lambda r: r["time_ms"])
                print(f"  b={b:3d} rho={rho:4g}: fastest with f64 orthogonality <= 1e-6: "
                      f"{best['param']} ({best['time_ms']:.3f} ms, err {best['orth_err_f64']:.1e})")


if __name__ == "__main__":
    main()
