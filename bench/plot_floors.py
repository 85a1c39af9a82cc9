#!/usr/bin/env python3
"""Draws each CPU kernel's measured time against its compute floor, as an SVG (stdlib only).

Reads one folder of an AVX2-against-AVX-512 A/B run (--results, required; the last one, on a
Zen 4, is in git history: `git show ea15ba8:bench/results/issue11/zen4_2026-11-27b/<file>`):
  avx2_vs_avx512_ab.json   compare_builds.py medians (the "avx512" build's column is used)
  backward_parts.json      BM_BackwardParts medians (dX only, dtheta only)
  roofline_avx512_*.json   bench_roofline; the floor uses the mean fp32 FMA peak, 2 threads
and writes an SVG (default bench/results/latest/kernel_floors.svg). Shape d = 4096, b = 32, N = 2048, float; floors are
2 N d b flops per product (apply 1, backward 2, dX or dtheta half 1, rotation step 3).

Run:  python3 bench/plot_floors.py --results DIR [--out FILE]
"""
import argparse
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, B, N = 4096, 32, 2048
PRODUCT_FLOPS = 2.0 * N * D * B


def fma_peak_gflops(folder):
    peaks = []
    for path in sorted(glob.glob(os.path.join(folder, "roofline_avx512_*.json"))):
        for bench in json.load(open(path))["benchmarks"]:
            if (bench.get("aggregate_name") == "median"
                    and bench["run_name"].startswith("BM_FmaPeak<float>/threads:2")):
                peaks.append(bench["GFLOP"])
    if not peaks:
        raise SystemExit(f"no fp32 FMA peak (2 threads) in {folder}/roofline_avx512_*.json")
    return sum(peaks) / len(peaks)


def kernel_times(folder):
    """(label, measured ms, products) rows, in drawing order."""
    ab = json.load(open(os.path.join(folder, "avx2_vs_avx512_ab.json")))["results"]
    parts = {b["run_name"]: b["real_time"] / 1000.0
             for b in json.load(open(os.path.join(folder, "backward_parts.json")))["benchmarks"]
             if b.get("aggregate_name") == "median"}

    def ab_ms(name):
        return ab[f"{name}/real_time"]["avx512"]["median_ms"]

    def part_ms(part):
        return parts[f"BM_BackwardParts/b:{B}/d:{D}/N:{N}/part:{part}/real_time"]

    shape = f"b:{B}/d:{D}/N:{N}"
    return [
        ("apply, in place", ab_ms(f"BM_Apply/{shape}"), 1),
        ("apply, out of place (streamed)", ab_ms(f"BM_ApplyOutOfPlace/{shape}"), 1),
        ("backward: dX only", part_ms(1), 1),
        ("backward: dtheta only (with 1.5 ms of VJP)", part_ms(2), 1),
        ("backward, in place", ab_ms(f"BM_Backward/{shape}"), 2),
        ("backward, out of place (streamed)", ab_ms(f"BM_BackwardOutOfPlace/{shape}"), 2),
        ("rotation step, Cayley-Neumann k = 3",
         ab_ms(f"BM_RotationStep/cayley_neumann/k:3/d:{D}/b:{B}/N:{N}"), 3),
    ]


def svg(rows, peak):
    width, left, right, top, bar, gap = 960, 340, 110, 60, 22, 12
    scale_ms = max(ms for _, ms, _ in rows) * 1.05
    plot = width - left - right
    height = top + len(rows) * (bar + gap) + 90

    def x(ms):
        return left + plot * ms / scale_ms

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">CPU kernels against '
           f'their compute floor, d = {D}, b = {B}, N = {N}, float</text>',
           f'<text x="10" y="42" fill="#555">dark: the floor at {peak:.1f} GFLOP/s (FMA peak, '
           f'2 threads); light: measured median; label: % of floor reached</text>']
    for i, (label, ms, products) in enumerate(rows):
        y = top + i * (bar + gap)
        floor_ms = products * PRODUCT_FLOPS / (peak * 1e9) * 1e3
        out.append(f'<text x="{left - 8}" y="{y + bar - 6}" text-anchor="end">{label}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{x(ms) - left:.1f}" height="{bar}" '
                   f'fill="#9ecae1"/>')
        out.append(f'<rect x="{left}" y="{y}" width="{x(floor_ms) - left:.1f}" height="{bar}" '
                   f'fill="#08519c"/>')
        out.append(f'<text x="{x(ms) + 6:.1f}" y="{y + bar - 6}">{ms:.2f} ms, '
                   f'{100 * floor_ms / ms:.0f}%</text>')
    axis_y = top + len(rows) * (bar + gap)
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot}" y2="{axis_y}" stroke="#333"/>')
    step = 2 if scale_ms > 10 else 1
    for tick in range(0, int(scale_ms) + 1, step):
        out.append(f'<line x1="{x(tick):.1f}" y1="{axis_y}" x2="{x(tick):.1f}" y2="{axis_y + 5}" '
                   f'stroke="#333"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{axis_y + 20}" text-anchor="middle">{tick}</text>')
    out.append(f'<text x="{left + plot / 2}" y="{axis_y + 40}" text-anchor="middle">ms</text>')
    out.append(f'<text x="10" y="{axis_y + 60}" fill="#555">The two backward halves come from '
               f'their own run (BM_BackwardParts), the other rows from one interleaved A/B run.'
               f'</text>')
    out.append(f'<text x="10" y="{axis_y + 78}" fill="#555">The apply and backward rows use the '
               f'exact Cayley map (its VJP is in the backward rows). Zen 4, 2 threads.</text>')
    out.append('</svg>')
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="folder of the A/B run's JSON files")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest",
                                                "kernel_floors.svg"))
    a = p.parse_args()
    peak = fma_peak_gflops(a.results)
    rows = kernel_times(a.results)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(svg(rows, peak))
    for label, ms, products in rows:
        floor_ms = products * PRODUCT_FLOPS / (peak * 1e9) * 1e3
        print(f"{label:55s} {ms:7.2f} ms  floor {floor_ms:5.2f} ms  {100 * floor_ms / ms:4.0f}%")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
