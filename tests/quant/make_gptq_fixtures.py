#!/usr/bin/env python3
"""Writes tests/quant/fixtures/gptq_reference.safetensors: GPTQ (v1, the "gptq" checkpoint format)
int4 layers and the weights the real AutoGPTQ dequantizes them to, for test_int4_reference.cpp.

AutoGPTQ 0.7.1 (PyPI `auto-gptq`) has a torch path in its QuantLinear
(auto_gptq/nn_modules/qlinear/qlinear_cuda.py) that runs on the CPU: it unpacks qweight and
qzeros, adds 1 to the zeros, and computes scales[g_idx] * (q - zero) in float16. This script
loads that one file from the wheel (it needs only torch), fills layers with random packed words
(every nibble value occurs, the sign bit and a stored zero of 15 included) and random act-order
g_idx for some, and multiplies by the identity: the output is W^T in float16, exactly.

    pip download --no-deps auto-gptq==0.7.1 -d /tmp/gptq && cd /tmp/gptq && unzip -q auto_gptq-*.whl -d x
    python tests/quant/make_gptq_fixtures.py /tmp/gptq/x

Keys: "<layer>.qweight" I32 [in/8, out], "<layer>.qzeros" I32 [groups, out/8], "<layer>.scales"
F16 [groups, out], "<layer>.g_idx" I32 [in] (the checkpoint's names), and "ref.<layer>.weight" F16
[out, in]. Layer "g<group>_<in>x<out>[_act]": its group size (-1: one group) and whether g_idx is
permuted. Made with torch 2.15.0, safetensors 0.8.0.
"""
import importlib.util
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def main():
    wheel = sys.argv[1]
    spec = importlib.util.spec_from_file_location(
        "qlinear_cuda", os.path.join(wheel, "auto_gptq", "nn_modules", "qlinear", "qlinear_cuda.py"))
    qlinear = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qlinear)
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(7)
    out = {}
    for group, d_in, d_out, act in ((32, 64, 32, False), (32, 64, 32, True), (16, 64, 32, True), (-1, 96, 64, False),
                                    (128, 256, 32, True)):
        name = f"g{group}_{d_in}x{d_out}" + ("_act" if act else "")
        layer = qlinear.QuantLinear(4, group, d_in, d_out, False)
        groups = layer.scales.shape[0]
        layer.qweight = torch.randint(-2**31, 2**31, tuple(layer.qweight.shape), generator=g,
                                      dtype=torch.int64).to(torch.int32)
        layer.qzeros = torch.randint(-2**31, 2**31, tuple(layer.qzeros.shape), generator=g,
                                     dtype=torch.int64).to(torch.int32)
        layer.scales = (torch.rand(tuple(layer.scales.shape), generator=g) * 0.02 + 1e-3).to(torch.float16)
        if act:
            layer.g_idx = torch.randint(0, groups, (d_in,), generator=g, dtype=torch.int32)
        w_t = layer(torch.eye(d_in, dtype=torch.float16))  # [in, out] = W^T, each entry 1 * w exactly
        assert w_t.dtype == torch.float16
        for key in ("qweight", "qzeros", "scales", "g_idx"):
            out[f"{name}.{key}"] = getattr(layer, key).contiguous()
        out[f"ref.{name}.weight"] = w_t.t().contiguous()
    save_file(out, os.path.join(HERE, "gptq_reference.safetensors"))


if __name__ == "__main__":
    main()
