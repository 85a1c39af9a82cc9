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


def test_float16_weights_are_refused_at_forward():
    model, fast = peft_pair(dict(oft_block_size=16), torch.float32)
    fast.to(torch.float16)
    with pytest.raises(TypeError, match="torch.float16; oft's CPU kernels take float32, float64 or "
                                        "bfloat16"):
        fast(torch.randn(3, D, dtype=torch.float16))


@pytest.mark.parametrize("adapter", [torch.float32, torch.bfloat16],
                         ids=["float32 adapter (PEFT's default)", "bfloat16 adapter"])
def test_bfloat16_model_is_as_accurate_as_peft(adapter):
    """A bfloat16 model, accelerated: output, dX and dtheta against the same parameters in
    float64. PEFT keeps a bfloat16 model's adapter weights in float32 (autocast_adapter_dtype);
    .to(torch.bfloat16) afterwards makes them bfloat16 too. Each result within 4 bfloat16
    roundings (4 * 2^-8, relative to the largest entry), as PEFT's own path is; and over all
    cases no less accurate than PEFT's (oft builds R and dtheta in float32 from a bfloat16
    weight, where PEFT computes in bfloat16)."""
    torch.manual_seed(5)
    tol = 4 * 2.0**-8
    errors = {"peft": [], "oft": []}
    for case in CASES:
        model, fast = peft_pair(case, torch.bfloat16)
        if adapter == torch.bfloat16:
            model.to(torch.bfloat16)
            fast.to(torch.bfloat16)
        assert next(p for n, p in fast.named_parameters() if "oft_" in n).dtype == adapter
        reference = copy.deepcopy(model).to(torch.float64)
        x = torch.randn(2, TOKENS // 2, D).bfloat16()
        truth = forward_backward(reference, x.double())
        for name, m in (("peft", model), ("oft", fast)):
            result = forward_backward(m, x)
            assert result[0].dtype == result[1].dtype == torch.bfloat16
            assert result[2].dtype == adapter
            for quantity, a, b in zip(("output", "dX", "dtheta"), result, truth):
                error = relative(a.double(), b)
                assert error <= tol, f"{name} {case_id(case)} {quantity}: {error:.3g} > {tol:g}"
                errors[name].append(error)
    mean = {name: sum(e) / len(e) for name, e in errors.items()}
    assert mean["oft"] <= mean["peft"], mean


def test_bfloat16_input_with_float32_adapter_skips_the_cast(monkeypatch):
    """PEFT's default bfloat16 setup on the CPU runs oft's bfloat16 kernels on the input as it is
    (no float32 copy); with the "float" arithmetic the rotation is the cast path's, bit for bit."""
    saved = oft.torch.get_bf16_arithmetic()
    try:
        oft.torch.set_bf16_arithmetic("float")
        _, fast = peft_pair(dict(oft_block_size=16), torch.bfloat16)
        rotation = fast.base_model.model[0].oft_R["default"]
        assert rotation.weight.dtype == torch.float32
        seen = []
        original = oft.peft.rotate
        monkeypatch.setattr(oft.peft, "rotate",
                            lambda x, *a, **k: seen.append(x.dtype) or original(x, *a, **k))
        x = torch.randn(7, D).bfloat16()
        y = rotation(x)
        assert seen == [torch.bfloat16] and y.dtype == torch.bfloat16
        cast = oft.torch.rotate(x.float(), rotation.weight, 16, policy="peft_neumann",
                                num_terms=rotation.num_cayley_neumann_terms).bfloat16()
        assert torch.equal(y.view(torch.int16), cast.view(torch.int16))
    finally:
        oft.torch.set_bf16_arithmetic(saved)
