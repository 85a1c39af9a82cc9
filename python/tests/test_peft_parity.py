"""oft.peft.accelerate against the real PEFT (pip): forward, dX and dtheta of PEFT OFT layers."""
import copy

import pytest
import torch
from peft import OFTConfig, get_peft_model
from peft.tuners.oft import layer as peft_layer

import oft.peft

D, N_OUT, TOKENS = 64, 24, 10
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}

CASES = (
    [dict(use_cayley_neumann=True, num_cayley_neumann_terms=t, oft_block_size=b)
     for t in (2, 5, 8) for b in (2, 16, 32)]
    + [dict(use_cayley_neumann=False, oft_block_size=b) for b in (2, 16, 32)]
    + [dict(use_cayley_neumann=True, oft_block_size=16, block_share=True),
       dict(use_cayley_neumann=False, oft_block_size=16, block_share=True),
       dict(use_cayley_neumann=True, oft_block_size=16, coft=True, eps=1e-3),
       dict(use_cayley_neumann=False, oft_block_size=32, coft=True, eps=1e-3)]
)


def case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def peft_pair(case, dtype, module=None):
    base = module if module is not None else torch.nn.Sequential(torch.nn.Linear(D, N_OUT, bias=True))
    model = get_peft_model(base.to(dtype), OFTConfig(r=0, target_modules=["0"], **case))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_" in name:
                p.copy_(0.15 * torch.randn_like(p))
    fast = copy.deepcopy(model)
    switched = oft.peft.accelerate(fast)
    assert switched == ["base_model.model.0.oft_R.default"] or switched == [
        "base_model.model.0.oft_embedding_R.default"]
    return model, fast


def forward_backward(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    dz = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * dz).sum().backward()
    theta = next(p for n, p in model.named_parameters() if "oft_" in n)
    return y.detach(), x.grad, theta.grad, theta.detach().clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_accelerated_linear_equals_peft(case, dtype):
    model, fast = peft_pair(case, dtype)
    x = torch.randn(2, TOKENS // 2, D, dtype=dtype)
    reference = forward_backward(model, x)
    result = forward_backward(fast, x)
    tol = TOL[dtype]
    for name, a, b in zip(("output", "dX", "dtheta", "theta after COFT"), result, reference):
        assert relative(a, b) <= tol, f"{name}: relative error {relative(a, b):.3g} > {tol:g}"


def test_accelerated_model_keeps_state_dict_merge_and_save(tmp_path):
    model, fast = peft_pair(dict(oft_block_size=16, use_cayley_neumann=True), torch.float64)
    assert model.state_dict().keys() == fast.state_dict().keys()
    x = torch.randn(TOKENS, D, dtype=torch.float64)
    unmerged = fast(x)
    fast.save_pretrained(tmp_path / "adapter")
    merged = fast.merge_and_unload()
    torch.testing.assert_close(merged(x), unmerged, rtol=1e-10, atol=1e-10)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_accelerated_embedding_equals_peft():
    torch.manual_seed(3)
    base = torch.nn.Sequential(torch.nn.Embedding(50, D))
    model, fast = peft_pair(dict(oft_block_size=16, use_cayley_neumann=True), torch.float64, base)
    ids = torch.randint(0, 50, (3, 7))
    assert relative(fast(ids), model(ids)) <= 1e-12
    assert isinstance(fast.base_model.model[0].oft_embedding_R["default"],
                      oft.peft.AcceleratedOFTRotationModule)


def test_unsupported_layers_are_refused_before_anything_changes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 8)
            self.conv = torch.nn.Conv2d(4, 4, 1)

    model = get_peft_model(Net(), OFTConfig(r=0, oft_block_size=4, target_modules=["lin", "conv"]))
    with pytest.raises(TypeError, match=r"conv is a PEFT OFT .*Conv2d; oft accelerates"):
        oft.peft.accelerate(model)
    assert not any(isinstance(m, oft.peft.AcceleratedOFTRotationModule) for m in model.modules())
    switched = oft.peft.accelerate(model, skip_unsupported=True)
    assert switched == ["base_model.model.lin.oft_R.default"]
    assert oft.peft.restore(model) == 1
    assert type(model.base_model.model.lin.oft_R["default"]) is peft_layer.OFTRotationModule
    with pytest.raises(ValueError, match="no PEFT OFT layer"):
        oft.peft.accelerate(torch.nn.Linear(4, 4))


def test_half_precision_weights_are_refused_at_forward():
    model, fast = peft_pair(dict(oft_block_size=16), torch.float32)
    fast.to(torch.bfloat16)
    with pytest.raises(TypeError, match="torch.bfloat16; oft's CPU kernels take float32 or float64"):
        fast(torch.randn(3, D, dtype=torch.bfloat16))
