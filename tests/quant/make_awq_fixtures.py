#!/usr/bin/env python3
"""Writes tests/quant/fixtures/awq_reference.safetensors: AWQ GEMM int4 layers and the weights the
real AutoAWQ dequantizes them to, for tests/quant/test_int4_group.cpp.

AutoAWQ 0.2.9 (PyPI `autoawq`; archived, its CUDA kernels are a separate package) dequantizes a
GEMM-format layer with `awq.utils.packing_utils.dequantize_gemm`, plain torch. This script loads
that file from the source distribution (it imports only torch) and runs it on random packed
tensors of several shapes and group sizes:

    pip download --no-deps autoawq==0.2.9 -d /tmp/awq && tar xzf /tmp/awq/autoawq-0.2.9.tar.gz -C /tmp/awq
    python tests/quant/make_awq_fixtures.py /tmp/awq/autoawq-0.2.9

Keys: "<layer>.qweight" I32 [in, out/8], "<layer>.qzeros" I32 [in/group, out/8],
"<layer>.scales" F16 [in/group, out] (the checkpoint's names), and "ref.<layer>.weight" F16
[out, in]: dequantize_gemm's [in, out] result, transposed to nn.Linear's layout. The group size
of layer "g<group>_<in>x<out>" is in its name. Made with torch 2.15.0, safetensors 0.8.0.
"""
import importlib.util
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def main():
    source = sys.argv[1]
    spec = importlib.util.spec_from_file_location(
        "awq_packing_utils", os.path.join(source, "awq", "utils", "packing_utils.py"))
    packing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packing)

    g = torch.Generator().manual_seed(20261126)
    out = {}
    for group, d_in, d_out in ((32, 64, 32), (64, 128, 48), (128, 256, 16), (16, 48, 8)):
        name = f"g{group}_{d_in}x{d_out}"
        # Random 32-bit words: every nibble value, the sign bit included, occurs.
        qweight = torch.randint(-2**31, 2**31, (d_in, d_out // 8), generator=g, dtype=torch.int64).to(torch.int32)
        qzeros = torch.randint(-2**31, 2**31, (d_in // group, d_out // 8), generator=g, dtype=torch.int64).to(torch.int32)
        scales = (torch.rand(d_in // group, d_out, generator=g) * 0.02 + 1e-3).to(torch.float16)
        w = packing.dequantize_gemm(qweight, qzeros, scales, 4, group)
        assert w.dtype == torch.float16 and tuple(w.shape) == (d_in, d_out)
        out[f"{name}.qweight"] = qweight
        out[f"{name}.qzeros"] = qzeros
        out[f"{name}.scales"] = scales
        out[f"ref.{name}.weight"] = w.t().contiguous()
    save_file(out, os.path.join(HERE, "awq_reference.safetensors"))


if __name__ == "__main__":
    main()
