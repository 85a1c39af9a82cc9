"""oft.torch on CUDA tensors (oft._core built with OFT_PYTHON_CUDA=ON), against oft's CPU path
and the real PEFT on the same GPU. Skipped without a GPU or without the CUDA build (run on a lent
GPU by scripts/gpu/gpu_python.sh)."""
import copy

import pytest
import torch

import oft
import oft.torch as ot

pytestmark = pytest.mark.skipif(not (oft.has_cuda and torch.cuda.is_available()),
                                reason="needs a GPU and oft._core built with OFT_PYTHON_CUDA=ON")


def relative(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def run_both(dtype, settings, shared=False, b=32, d=256, n=300):
    torch.manual_seed(0)
    g = 1 if shared else d // b
    x = torch.randn(n, d, dtype=torch.float64)
    theta = 0.05 * torch.randn(g, b * (b - 1) // 2, dtype=torch.float64)
    dy = torch.randn(n, d, dtype=torch.float64)
    out = {}
    for device, dt in (("cpu", torch.float64), ("cuda", dtype)):
        # copy=True: x.to() of the same device and dtype would return x itself, which would
        # then be a leaf of both graphs.
        xs = x.to(device, dt, copy=True).requires_grad_()
        th = theta.to(device, torch.float64 if dt == torch.float64 else torch.float32,
                      copy=True).requires_grad_()
        y = ot.rotate(xs, th, b, shared=shared, **settings)
        y.backward(dy.to(device, dt))
        out[device] = (y.detach(), xs.grad, th.grad)
    return out


TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
SETTINGS = [dict(policy="peft_neumann", num_terms=5), dict(policy="cayley_neumann", k=4),
            dict(policy="cayley")]


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s["policy"])
@pytest.mark.parametrize("shared", [False, True])
def test_cuda_rotate_matches_cpu(dtype, settings, shared):
    out = run_both(dtype, settings, shared)
    for name, a, b in zip(("y", "dx", "dtheta"), out["cuda"], out["cpu"]):
        err = relative(a, b)
        assert err <= TOL[dtype], f"{name}: {err:.3g} > {TOL[dtype]:g}"


def test_cuda_refuses_policies_without_kernels():
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(ValueError, match="no CUDA kernel"):
        ot.rotate(x, torch.zeros(4, 120, device="cuda"), 16, policy="peft_neumann", num_terms=2)
    with pytest.raises(ValueError, match="is on cpu|x is on cuda"):
        ot.rotate(x, torch.zeros(4, 120), 16)


def test_cuda_side_stream():
    x = torch.randn(64, 128, device="cuda")
    theta = 0.1 * torch.randn(4, 496, device="cuda")
    expected = ot.rotate(x, theta, 32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = ot.rotate(x, theta, 32)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_peft_accelerate_on_cuda(dtype):
    from peft import OFTConfig, get_peft_model
    import oft.peft
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(512, 256)).to("cuda", dtype)
    model = get_peft_model(base, OFTConfig(r=0, oft_block_size=32, target_modules=["0"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_" in name:
                p.normal_(0, 0.05)
    fast = copy.deepcopy(model)
    oft.peft.accelerate(fast)
    x = torch.randn(4, 100, 512, device="cuda", dtype=dtype)
    results = []
    for m in (model, fast):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.float().square().sum().backward()
        theta = next(p for n, p in m.named_parameters() if "oft_" in n)
        results.append((y.detach(), xi.grad, theta.grad))
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for name, a, b in zip(("y", "dx", "dtheta"), results[1], results[0]):
        err = relative(a, b)
        assert err <= tol, f"{name}: {err:.3g} > {tol:g}"

