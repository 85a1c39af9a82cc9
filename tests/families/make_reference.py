#!/usr/bin/env python3
"""Writes fixtures/families_reference.safetensors and fixtures/adapters/{boft,hra}/: what Hugging
Face PEFT's own BOFT and HRA Linear layers compute, for tests/families/test_reference.py (the
numpy reference of docs/families.md) and, later, the C++ operators.

Rerun (CPU only, a few seconds; the venv holds torch, peft 0.21.2, safetensors):

    /work/peft-venv/bin/python tests/families/make_reference.py

(any venv with `pip install peft==0.21.2 safetensors` works: pass --out to write elsewhere).
The script re-executes itself with PYTHONHASHSEED=0 so that PEFT's set-valued
`target_modules` is written in the same order each time.

BOFT and the CUDA extension. PEFT 0.21.2's BOFT layer tries to JIT-build its CUDA extension
`fbd_cuda` (`peft/tuners/boft/fbd/`); when that fails (any machine without CUDA and ninja) it
silently sets `boft_n_butterfly_factor = 1`, so on a CPU a real PEFT layer never has more than one
butterfly factor. This script never lets PEFT try to build anything: for m = 1 it marks the
extension absent (PEFT's own CPU path, `torch.block_diag`); for m > 1 it hands PEFT a CPU stand-in
for the extension that does what `fbd_cuda_kernel.cu` does (out[z, n b + x, n b + y] =
in[z, n, x, y]; the backward takes the diagonal blocks back), so every other line that runs is
PEFT's. Each case's metadata says which (`fbd`); the script checks that both agree on m = 1.

Per case `<name>` (float64 unless said; n = 3 tokens; in = d, out = n_out):
  <name>.X [n, d]   <name>.W0 [n_out, d]   <name>.bias [n_out] (absent when bias=False)
  <name>.G [n, n_out]            the fixed cotangent: gradients are of L = sum(Y * G)
  <name>.Y [n, n_out]            PEFT's forward in eval mode (adapter unmerged)
  <name>.W_merged [n_out, d]     the base weight after PEFT's merge()
  <name>.dX [n, d]               dL/dX by torch autograd through PEFT's forward
  BOFT: <name>.boft_R [m, N, b, b], <name>.boft_s [n_out, 1] (as PEFT stores them),
        <name>.d_boft_R, <name>.d_boft_s, <name>.perm [m, d] int64 (PEFT's block_butterfly_perm
        per factor: row k of factor i's permutation matrix has its 1 in column perm[i, k]),
        <name>.rotation [d, d] the dense butterfly product PEFT forms (get_delta_weight()[0])
  HRA:  <name>.hra_u [d, r], <name>.d_hra_u
Tiny two-layer model (float32), one per family, whose adapter folder is in fixtures/adapters/:
  adapter_<family>.X [3, 16], .<module>.weight / .<module>.bias (the base),
  .<module>.merged_weight (after merge_and_unload), .Y (the PeftModel's output, eval, unmerged)
Metadata: one key, "reference", a JSON object: "cases" (per case its PEFT config, derived shapes,
fbd), "adapters" (per family the config and the sha256 of adapter_model.safetensors), "versions"
(peft, torch, safetensors, numpy, python).
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import peft  # noqa: E402
import peft.tuners.boft.layer as boft_layer  # noqa: E402
import safetensors  # noqa: E402
from peft import BOFTConfig, HRAConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from peft_fbd_stand_in import FbdStandIn  # noqa: E402  (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
TOKENS = 3

# (name, in, out, bias, PEFT config fields). Every BOFT case is one PEFT accepts.
BOFT_CASES = [
    ("boft_i16_o12_bs4_m1", 16, 12, True, dict(boft_block_size=4, boft_n_butterfly_factor=1)),
    ("boft_i16_o12_bs4_m2", 16, 12, True, dict(boft_block_size=4, boft_n_butterfly_factor=2)),
    ("boft_i16_o12_bs4_m3_dropout", 16, 12, True,
     dict(boft_block_size=4, boft_n_butterfly_factor=3, boft_dropout=0.25)),  # eval: no dropout
    ("boft_i16_o12_bs8_m1", 16, 12, True, dict(boft_block_size=8, boft_n_butterfly_factor=1)),
    ("boft_i16_o12_bs8_m2_nobias", 16, 12, False, dict(boft_block_size=8, boft_n_butterfly_factor=2)),
    ("boft_i16_o12_bn2_m2", 16, 12, True,
     dict(boft_block_size=0, boft_block_num=2, boft_n_butterfly_factor=2)),  # b = 8 from N
    ("boft_i32_o8_bs4_m4", 32, 8, True, dict(boft_block_size=4, boft_n_butterfly_factor=4)),
    # b = 2, m = log2(d): every block is a 2 x 2 rotation, a full butterfly of Givens rotations
    ("boft_i32_o8_bs2_m5", 32, 8, True, dict(boft_block_size=2, boft_n_butterfly_factor=5)),
]
HRA_CASES = [
    ("hra_i16_o12_r2", 16, 12, True, dict(r=2, apply_GS=False)),
    ("hra_i16_o12_r2_gs", 16, 12, True, dict(r=2, apply_GS=True)),
    ("hra_i16_o12_r3", 16, 12, True, dict(r=3, apply_GS=False)),
    ("hra_i16_o12_r3_gs", 16, 12, True, dict(r=3, apply_GS=True)),
    ("hra_i16_o12_r16", 16, 12, True, dict(r=16, apply_GS=False)),  # r = d reflections
    ("hra_i32_o8_r4", 32, 8, True, dict(r=4, apply_GS=False)),
    ("hra_i32_o8_r4_gs_nobias", 32, 8, False, dict(r=4, apply_GS=True)),
]


def use_fbd(stand_in):
    # get_fbd_cuda() returns the cached module when it is not None: False means "absent" and
    # keeps PEFT from trying to build the extension.
    boft_layer._FBD_CUDA = FbdStandIn if stand_in else False


class OneLayer(nn.Module):
    def __init__(self, d, n_out, bias):
        super().__init__()
        self.proj = nn.Linear(d, n_out, bias=bias)

    def forward(self, x):
        return self.proj(x)


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(16, 16)
        self.lin2 = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x)))


def randn(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def randomize_adapter(layer, family, gen):
    """Non-trivial adapter values (the PEFT inits give R = I, or worse, see docs/families.md)."""
    with torch.no_grad():
        if family == "boft":
            R, s = layer.boft_R["default"], layer.boft_s["default"]
            R.copy_(0.5 * randn(gen, *R.shape, dtype=R.dtype))  # full A, not skew: tests 0.5 (A - A^T)
            s.copy_(1.0 + 0.2 * randn(gen, *s.shape, dtype=s.dtype))
        else:
            u = layer.hra_u["default"]
            u.copy_(randn(gen, *u.shape, dtype=u.dtype))


def make_config(family, fields, targets):
    if family == "boft":
        return BOFTConfig(target_modules=targets, **fields)
    return HRAConfig(target_modules=targets, **fields)


def layer_case(family, name, d, n_out, bias, fields, seed):
    gen = torch.Generator().manual_seed(seed)
    m = fields.get("boft_n_butterfly_factor", 1)
    stand_in = family == "boft" and m > 1
    use_fbd(stand_in)

    base = OneLayer(d, n_out, bias).double()
    with torch.no_grad():
        base.proj.weight.copy_(randn(gen, n_out, d) / d ** 0.5)
        if bias:
            base.proj.bias.copy_(randn(gen, n_out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HRA's "symmetric initialization" warning for odd r
        model = get_peft_model(base, make_config(family, fields, ["proj"]))
    model = model.double().eval()
    layer = model.base_model.model.proj
    randomize_adapter(layer, family, gen)

    X = randn(gen, TOKENS, d).requires_grad_(True)
    G = randn(gen, TOKENS, n_out)
    Y = model(X)
    (Y * G).sum().backward()

    t = {"X": X.detach(), "W0": layer.get_base_layer().weight.detach().clone(), "G": G,
         "Y": Y.detach(), "dX": X.grad.clone()}
    if bias:
        t["bias"] = layer.get_base_layer().bias.detach().clone()
    if family == "boft":
        R, s = layer.boft_R["default"], layer.boft_s["default"]
        t.update(boft_R=R.detach().clone(), boft_s=s.detach().clone(), d_boft_R=R.grad.clone(),
                 d_boft_s=s.grad.clone(), perm=layer.boft_P.argmax(dim=2).to(torch.int64))
        # each row of boft_P holds a single 1
        assert torch.equal(layer.boft_P.sum(dim=2), torch.ones_like(layer.boft_P[:, :, 0]))
        with torch.no_grad():
            t["rotation"] = layer.get_delta_weight("default")[0].clone()
        derived = {"m": R.shape[0], "N": R.shape[1], "b": R.shape[2]}
        assert derived["m"] == m, f"{name}: PEFT made {derived['m']} factors, asked for {m}"
    else:
        u = layer.hra_u["default"]
        t.update(hra_u=u.detach().clone(), d_hra_u=u.grad.clone())
        derived = {"r": u.shape[1], "apply_GS": fields["apply_GS"]}

    merged = copy.deepcopy(model)
    merged_layer = merged.base_model.model.proj
    merged_layer.merge()
    t["W_merged"] = merged_layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():  # merged and unmerged forwards agree (sanity, not part of the fixture)
        diff = (merged(X) - Y).norm() / Y.norm()
    assert diff < 1e-12, f"{name}: merged forward differs by {diff:.2e}"

    meta = {"name": name, "family": family, "in_features": d, "out_features": n_out,
            "tokens": TOKENS, "bias": bias, "seed": seed, "peft_config": fields,
            "derived": derived}
    if family == "boft":
        meta["fbd"] = "cpu stand-in for fbd_cuda" if stand_in else "peft cpu path (torch.block_diag)"
    return {f"{name}.{k}": v.contiguous() for k, v in t.items()}, meta


def check_stand_in_on_one_factor():
    """On m = 1 the stand-in and PEFT's own CPU path must give the same Y and gradients."""
    results = []
    for stand_in in (False, True):
        use_fbd(stand_in)
        torch.manual_seed(99)  # nn.Linear's init draws from the global generator
        gen = torch.Generator().manual_seed(99)
        base = OneLayer(16, 12, True).double()
        model = get_peft_model(base, BOFTConfig(boft_block_size=4, target_modules=["proj"]))
        model = model.double().eval()
        layer = model.base_model.model.proj
        assert layer.fbd_cuda_available == stand_in
        randomize_adapter(layer, "boft", gen)
        X = randn(gen, TOKENS, 16)
        Y = model(X)
        Y.sum().backward()
        results.append((Y.detach(), layer.boft_R["default"].grad.clone()))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1) and torch.allclose(g0, g1, rtol=0, atol=1e-15)


def adapter_folder(family, out_dir, seed):
    """A real PEFT adapter folder (save_pretrained) on a tiny float32 model, plus its base."""
    gen = torch.Generator().manual_seed(seed)
    if family == "boft":
        fields = dict(boft_block_size=4, boft_n_butterfly_factor=2, boft_dropout=0.1)
    else:
        fields = dict(r=4, apply_GS=True)
    use_fbd(family == "boft")
    base = TinyModel()
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(randn(gen, *p.shape, dtype=torch.float32) / 4)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, make_config(family, fields, ["lin1", "lin2"])).eval()
    for name in ("lin1", "lin2"):
        randomize_adapter(getattr(model.base_model.model, name), family, gen)

    folder = out_dir / "adapters" / family
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's empty model card: not the format

    X = randn(gen, 3, 16, dtype=torch.float32)
    with torch.no_grad():
        Y = model(X)
    # the folder loads back into PEFT and gives the same output
    reloaded = TinyModel()
    reloaded.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(reloaded, folder).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(X), Y)
        merged = reloaded.merge_and_unload()

    t = {"X": X, "Y": Y}
    for k, v in base_state.items():
        t[k] = v
    for name in ("lin1", "lin2"):
        t[f"{name}.merged_weight"] = getattr(merged, name).weight.detach().clone()
    sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    meta = {"family": family, "peft_config": fields, "modules": ["lin1", "lin2"],
            "adapter_model_sha256": sha, "dtype": "float32"}
    return {f"adapter_{family}.{k}": v.contiguous() for k, v in t.items()}, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    check_stand_in_on_one_factor()
    tensors, cases = {}, []
    all_cases = [("boft",) + c for c in BOFT_CASES] + [("hra",) + c for c in HRA_CASES]
    for seed, (family, name, d, n_out, bias, fields) in enumerate(all_cases, start=1000):
        t, meta = layer_case(family, name, d, n_out, bias, fields, seed)
        tensors.update(t)
        cases.append(meta)
    adapters = {}
    for seed, family in enumerate(("boft", "hra"), start=2000):
        t, meta = adapter_folder(family, args.out, seed)
        tensors.update(t)
        adapters[family] = meta

    # One metadata key: safetensors writes its metadata map in a random order, one key keeps
    # the file byte for byte the same from run to run.
    reference = {
        "cases": cases,
        "adapters": adapters,
        "versions": {"peft": peft.__version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "generated_by": "tests/families/make_reference.py",
        "gradients_of": "L = sum(Y * G), eval mode, adapter unmerged",
    }
    metadata = {"reference": json.dumps(reference, sort_keys=True)}
    path = args.out / "families_reference.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {path} ({path.stat().st_size} bytes), {len(cases)} cases, "
          f"adapters {sorted(adapters)}; fixtures total {total} bytes")


if __name__ == "__main__":
    main()
