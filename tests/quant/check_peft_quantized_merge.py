#!/usr/bin/env python3
"""Does PEFT's merge of an OFT adapter into a bitsandbytes NF4 / LLM.int8 base keep the rotation?

Builds a Linear(64 -> 48) quantized by the real bitsandbytes on the CPU, wraps it in PEFT OFT
(b = 16) with a nonzero rotation, merges, and compares the dequantized merged weight with the
base and with the float merge W R^T. Run by hand (the evidence that PEFT 0.18-0.20 drop the
rotation, docs/quant.md), with the PEFT version to examine first on the path:

    python3 -m venv /tmp/qm && /tmp/qm/bin/pip install torch bitsandbytes==0.50.2 transformers peft
    /tmp/qm/bin/python tests/quant/check_peft_quantized_merge.py            # installed PEFT
    /tmp/qm/bin/pip download --no-deps peft==0.19.0 -d /tmp/w && unzip -q /tmp/w/peft-0.19.0-*.whl -d /tmp/p19
    PYTHONPATH=/tmp/p19 /tmp/qm/bin/python tests/quant/check_peft_quantized_merge.py

Found (bitsandbytes 0.50.2, torch 2.15.0, transformers 5.24.0, CPU): PEFT 0.18.1 and
0.19.0 store the transposed base (a [64, 48] weight for a [48, 64] layer; max |merged - W^T| =
0.0068 NF4, 0.0005 int8, i.e. W^T requantized): the rotation is discarded. PEFT 0.20.0 fails
earlier (its 4-bit OFT layer cannot be built; same merge code). PEFT 0.21.0 moved quantized
merging to a generic dequantize -> rotate -> requantize path; 0.21.2 keeps the rotation (max
|merged - W R^T| = 0.027 NF4, 0.0009 int8: the requantization error).
"""
import warnings
warnings.filterwarnings("ignore")
import torch, peft, bitsandbytes as bnb
import bitsandbytes.functional as F
from peft import OFTConfig, get_peft_model

torch.manual_seed(0)

class Net(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.proj = layer
    def forward(self, x):
        return self.proj(x)

def dequant(layer):
    w = layer.weight
    if isinstance(w, bnb.nn.Params4bit):
        return F.dequantize_4bit(w.data, w.quant_state).float()
    return (w.data.float() * w.SCB.view(-1, 1).float() / 127)

def run(kind):
    dense = torch.nn.Linear(64, 48, bias=False)
    if kind == "nf4":
        q = bnb.nn.Linear4bit(64, 48, bias=False, quant_type="nf4", compute_dtype=torch.float32)
        q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
        q.weight = q.weight._quantize("cpu")
    else:
        q = bnb.nn.Linear8bitLt(64, 48, bias=False, has_fp16_weights=False)
        q.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        q.weight = q.weight._quantize("cpu")
    net = Net(q)
    # What transformers sets on a model loaded with a BitsAndBytesConfig; PEFT <= 0.20 picks its
    # bitsandbytes OFT layers (tuners/oft/bnb.py) from these flags.
    net.is_loaded_in_4bit = kind == "nf4"
    net.is_loaded_in_8bit = kind == "int8"
    model = get_peft_model(net, OFTConfig(target_modules=["proj"], oft_block_size=16, r=0,
                                             init_weights=False))
    layer = model.base_model.model.proj
    print(f"peft {peft.__version__} {kind}: OFT layer class {type(layer).__module__}.{type(layer).__name__}")
    base = dequant(layer.get_base_layer())
    with torch.no_grad():
        rotation = layer.get_delta_weight("default").float()     # d x d, block-diagonal
    expected = (rotation @ base.t()).t()                           # W R^T, float merge
    try:
        layer.merge()
    except Exception as e:
        print(f"peft {peft.__version__} {kind}: merge raised {type(e).__name__}: {e}")
        return
    merged = dequant(layer.get_base_layer())
    print(f"peft {peft.__version__} bitsandbytes {bnb.__version__} {kind}: merged weight shape "
          f"{tuple(merged.shape)}; |rotation - I|max = {(rotation - torch.eye(64)).abs().max():.3f}")
    if merged.shape != expected.shape:
        print(f"  merged shape differs from the layer's {tuple(expected.shape)}")
        if merged.shape == base.t().shape:
            print(f"  max |merged - base^T| = {(merged - base.t()).abs().max():.4f} (the transposed base)")
        return
    print(f"  max |merged - base| = {(merged - base).abs().max():.4f}, "
          f"max |merged - float merge| = {(merged - expected).abs().max():.4f}, "
          f"max |float merge - base| = {(expected - base).abs().max():.4f}")

for kind in ("nf4", "int8"):
    run(kind)
