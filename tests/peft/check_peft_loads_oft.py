#!/usr/bin/env python3
"""Adapters written by oft load in the real PEFT and merge to what PEFT's own adapters gave.

Run by hand (CI has no Python packages), with the venv of make_adapters.py:
    BUILD/tests/peft/resave_adapters F/exact /tmp/oft/exact F/embedding /tmp/oft/embedding ...
    /tmp/peftvenv/bin/python tests/peft/check_peft_loads_oft.py /tmp/oft
(F = tests/peft/fixtures/adapters). For every adapter directory under the argument, the toy
model of make_adapters.py (same seed, so the same frozen weights) gets the adapter through
PeftModel.from_pretrained, and merge_and_unload must give exactly what the same PEFT gives for
the original fixture (PEFT's own file). (For legacy_t5 both differ from the fixture's reference,
which PEFT 0.17.1 made: a current PEFT reads any adapter without peft_version with its new
polynomial and only warns.)
"""
import sys
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from make_adapters import HERE, Toy  # noqa: E402


def main():
    failures = 0
    for directory in sorted(Path(sys.argv[1]).iterdir()):
        worst = 0.0
        merged = {}
        for source in (directory, HERE / directory.name):
            torch.manual_seed(0)  # make_adapters.py builds its base the same way
            merged[source] = peft.PeftModel.from_pretrained(Toy(), str(source)).merge_and_unload()
        reference = load_file(str(HERE / directory.name / "reference.safetensors"))
        for key in reference:
            if key.endswith(".merged"):
                module = key[: -len(".merged")]
                ours = getattr(merged[directory], module).weight
                theirs = getattr(merged[HERE / directory.name], module).weight
                worst = max(worst, ((ours - theirs).abs().max() / theirs.abs().max()).item())
        ok = worst == 0.0
        failures += not ok
        print(f"{directory.name}: PEFT {peft.__version__}, merge of oft's file vs of PEFT's file: "
              f"max rel diff {worst:.2e} {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
