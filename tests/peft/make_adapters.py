#!/usr/bin/env python3
"""Trains small OFT adapters with the real Hugging Face PEFT and saves them, with what PEFT's own
merge computes, as fixtures for oft's C++ adapter tests (tests/io/test_peft_adapter.cpp).

    python3 -m venv /tmp/peftvenv && /tmp/peftvenv/bin/pip install peft==0.21.2 safetensors
    /tmp/peftvenv/bin/pip install --no-deps --target /tmp/peft0171 peft==0.17.1
    /tmp/peftvenv/bin/python tests/peft/make_adapters.py --legacy-path /tmp/peft0171

For each configuration, fixtures/adapters/<name>/ holds PEFT's own files
(adapter_config.json, adapter_model.safetensors, as save_pretrained wrote them) and
reference.safetensors: for every adapted module <m>, `<m>.base` (the frozen weight) and
`<m>.merged` (the weight after PEFT's merge_and_unload), float32. The model is a toy: an
Embedding(40, 24), Linear(24, 32) `fc1`, Linear(32, 16, bias=False) `fc2` and Linear(20, 12)
`odd` (20 is not a multiple of the block size 8, so PEFT adjusts b for that layer).
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent / "fixtures" / "adapters"

# name -> OFTConfig arguments (PEFT >= 0.18 unless legacy)
CONFIGS = {
    "neumann_t5": dict(oft_block_size=8, target_modules=["fc1", "fc2", "odd"]),
    "neumann_t2": dict(oft_block_size=8, num_cayley_neumann_terms=2, target_modules=["fc1", "fc2"]),
    "exact": dict(oft_block_size=8, use_cayley_neumann=False, target_modules=["fc1", "fc2"]),
    "block_share": dict(oft_block_size=8, block_share=True, target_modules=["fc1", "fc2"]),
    "coft": dict(oft_block_size=8, coft=True, eps=2e-3, target_modules=["fc1", "fc2"]),
    "embedding": dict(oft_block_size=8, target_modules=["emb", "fc1"]),
}
LEGACY = {"legacy_t5": dict(oft_block_size=8, target_modules=["fc1", "fc2"])}


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 24)
        self.fc1 = nn.Linear(24, 32)
        self.fc2 = nn.Linear(32, 16, bias=False)
        self.odd = nn.Linear(20, 12)

    def forward(self, tokens, side):
        return self.fc2(torch.tanh(self.fc1(self.emb(tokens)))), self.odd(side)


def make(name, options, out_dir):
    import peft
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = Toy()
    base_weights = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(base, peft.OFTConfig(r=0, **options))
    # A few Adam steps towards random targets, so theta moves well away from zero (each entry
    # by up to about steps * lr) while staying finite.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (6, 5), generator=g)
    side = torch.randn(6, 20, generator=g)
    target_main, target_odd = torch.randn(6, 5, 16, generator=g), torch.randn(6, 12, generator=g)
    for _ in range(10):
        out_main, out_odd = model(tokens, side)
        loss = ((out_main - target_main) ** 2).mean() + ((out_odd - target_odd) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for parameter, value in model.named_parameters():
        if value.requires_grad:
            assert torch.isfinite(value).all() and value.abs().max() > 1e-3, (parameter, value.abs().max())

    target = out_dir / name
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(str(target))
    merged = model.merge_and_unload()
    reference = {}
    for module in options["target_modules"]:
        reference[f"{module}.base"] = base_weights[f"{module}.weight"].contiguous()
        reference[f"{module}.merged"] = getattr(merged, module).weight.detach().contiguous()
    save_file(reference, str(target / "reference.safetensors"),
              metadata={"peft": peft.__version__, "torch": torch.__version__})
    config = json.loads((target / "adapter_config.json").read_text())
    print(f"{name}: peft {peft.__version__}, peft_version in config: {config.get('peft_version')}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--legacy-path", required=True)
    parser.add_argument("--legacy-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    HERE.mkdir(parents=True, exist_ok=True)
    if args.legacy_child:
        for name, options in LEGACY.items():
            make(name, options, HERE)
        return
    for name, options in CONFIGS.items():
        make(name, options, HERE)
    subprocess.run([sys.executable, __file__, "--legacy-path", args.legacy_path, "--legacy-child"],
                   check=True, env={"PYTHONPATH": args.legacy_path, "PATH": "/usr/bin:/bin"})


if __name__ == "__main__":
    main()
