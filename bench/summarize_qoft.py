#!/usr/bin/env python3
"""Markdown table of a bench_qoft JSON report (medians), with each step's ratio to the dense
base GEMM step of the same run.

    bench/summarize_qoft.py bench/results/xeon/qoft_step.json
"""
import json
import sys

FORMATS = {0: "float32", 1: "NF4 (bs 64)", 2: "int8 (LLM.int8)"}
NAMES = {
    "BM_BaseGemmStep": "dense GEMMs (Z = X W^T, dX = dZ W)",
    "BM_FusedGemmStep": "fused dequantize-GEMMs, same products",
    "BM_OftLayerStep": "OFT layer step (dense base)",
    "BM_QoftLayerStep": "QOFT layer step",
    "BM_QloraLayerStep": "QLoRA layer step (r = 16)",
    "BM_Dequantize": "dequantize the whole W once",
}


def main(path):
    report = json.load(open(path))
    rows = {}
    for b in report["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"].split("/")[0]
        fmt = int(b["run_name"].split("fmt:")[1].split("/")[0])
        rows[(name, fmt)] = b
    base = rows[("BM_BaseGemmStep", 0)]["real_time"]
    ctx = report["context"]
    print(f"{ctx.get('host_name', '')}, {ctx.get('num_cpus')} CPUs, load {ctx.get('load_avg')}, "
          f"{ctx.get('oft_gemm_backend', '')}, ISA {ctx.get('oft_isa', '')}\n")
    print("| step | base format | weight held | median | vs dense GEMMs | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in NAMES:
        for fmt in FORMATS:
            b = rows.get((name, fmt))
            if b is None:
                continue
            t = b["real_time"]
            unit = b["time_unit"]
            rate = f"{b['GFLOP']:.1f}" if "GFLOP" in b else "-"
            ratio = f"{t / base:.2f}x" if name != "BM_Dequantize" else "-"
            print(f"| {NAMES[name]} | {FORMATS[fmt]} | {b['weight_MiB']:.1f} MiB | {t:.1f} {unit} | {ratio} | {rate} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/xeon/qoft_step.json")
