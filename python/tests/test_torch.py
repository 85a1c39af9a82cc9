"""oft.torch: gradcheck of every op in double, the module, torch.compile, no_grad/inference mode."""
import pytest
import torch

import oft.torch as ot

POLICY_SETTINGS = [
    dict(policy="peft_neumann", num_terms=0), dict(policy="peft_neumann", num_terms=2),
    dict(policy="peft_neumann", num_terms=3), dict(policy="peft_neumann", num_terms=5),
    dict(policy="peft_neumann", num_terms=8), dict(policy="cayley_neumann", k=1),
    dict(policy="cayley_neumann", k=4), dict(policy="cayley"), dict(policy="tolerance", tol=1e-8),
    dict(policy="exponential"),
]


@pytest.mark.parametrize("settings", POLICY_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("shared", [False, True])
def test_rotate_gradcheck(settings, shared):
    b, r = 4, 3
    x = torch.randn(2, 5, r * b, dtype=torch.float64, requires_grad=True)  # leading dims kept
    theta = (0.1 * torch.randn(1 if shared else r, 6, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: ot.rotate(a, t, b, shared=shared, **settings),
                                    (x, theta))


@pytest.mark.parametrize("settings", POLICY_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_rotation_blocks_gradcheck(settings):
    theta = (0.1 * torch.randn(3, 10, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ot.rotation_blocks(t, 5, **settings), (theta,))


def test_rotate_equals_the_product_with_its_blocks():
    theta = 0.2 * torch.randn(4, 28, dtype=torch.float64)
    x = torch.randn(9, 32, dtype=torch.float64)
    blocks = ot.rotation_blocks(theta, 8)
    expected = torch.einsum("nrk,rkc->nrc", x.view(9, 4, 8), blocks).reshape(9, 32)
    torch.testing.assert_close(ot.rotate(x, theta, 8), expected, rtol=1e-14, atol=1e-14)


def test_only_the_wanted_gradients_are_computed():
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    theta = 0.3 * torch.randn(2, 6, dtype=torch.float64)  # frozen
    ot.rotate(x, theta, 4).sum().backward()
    assert x.grad is not None and theta.grad is None
    x2 = torch.randn(6, 8, dtype=torch.float64)  # frozen input
    theta2 = theta.clone().requires_grad_()
    ot.rotate(x2, theta2, 4).sum().backward()
    assert theta2.grad is not None


def test_module_has_pefts_parameter_and_starts_at_identity():
    m = ot.OFTRotation(64, 16, dtype=torch.float64)
    assert m.weight.shape == (4, 120) and torch.count_nonzero(m.weight) == 0
    assert dict(m.named_parameters()).keys() == {"weight"}
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(m(x), x)
    shared = ot.OFTRotation(64, 16, block_share=True)
    assert shared.weight.shape == (1, 120)
    assert ot.OFTRotation(64, 16, policy="cayley_neumann", k=2).rotation_matrices().shape == (4, 16, 16)
    with pytest.raises(ValueError, match="in_features 60 is not a multiple of block_size 16"):
        ot.OFTRotation(60, 16)
    with pytest.raises(ValueError, match="unknown policy 'neumann'"):
        ot.OFTRotation(64, 16, policy="neumann")


def test_no_grad_and_inference_mode():
    m = ot.OFTRotation(32, 8)
    with torch.no_grad():
        m.weight.normal_(0, 0.1)
    x = torch.randn(4, 32)
    y = m(x)
    with torch.no_grad():
        assert torch.equal(m(x), y)
    with torch.inference_mode():
        assert torch.equal(m(x), y)


def test_torch_compile_sees_one_opaque_op():
    m = ot.OFTRotation(32, 8, dtype=torch.float64)
    with torch.no_grad():
        m.weight.normal_(0, 0.1)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)

    def step(inp):
        return (m(inp) * 2.0).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x)
    loss.backward()
    grads = (x.grad.clone(), m.weight.grad.clone())
    x.grad = None
    m.weight.grad = None
    step(x).backward()
    torch.testing.assert_close(loss, step(x))
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], m.weight.grad)


def test_bad_input_is_refused_with_names():
    theta = torch.zeros(2, 6)
    with pytest.raises(TypeError, match=r"x \[3, 8\] is torch.float16"):
        ot.rotate(torch.zeros(3, 8, dtype=torch.float16), theta, 4)
    with pytest.raises(TypeError, match=r"x \[3, 8\] is torch.float64 but theta \[2, 6\] is torch.float32"):
        ot.rotate(torch.zeros(3, 8, dtype=torch.float64), theta, 4)
    with pytest.raises(ValueError, match=r"x \[3, 8\] is on meta"):
        ot.rotate(torch.zeros(3, 8, device="meta"), theta, 4)
    with pytest.raises(ValueError, match=r"theta \[3, 6\] must be \[2, 6\]"):
        ot.rotate(torch.zeros(3, 8), torch.zeros(3, 6), 4)
    with pytest.raises(ValueError, match=r"last dimension is not a multiple of block_size 3"):
        ot.rotate(torch.zeros(3, 8), theta, 3)
    with pytest.raises(TypeError, match=r"must be a torch.Tensor"):
        ot.rotate([[0.0] * 8], theta, 4)
    with pytest.raises(ValueError, match=r"non-finite"):
        ot.rotate(torch.zeros(3, 8), torch.full((2, 6), float("inf")), 4)


def test_non_contiguous_inputs_are_handled():
    theta = 0.2 * torch.randn(2, 6, dtype=torch.float64)
    x = torch.randn(8, 5, dtype=torch.float64).t()  # columns strided: copied once
    torch.testing.assert_close(ot.rotate(x, theta, 4), ot.rotate(x.contiguous(), theta, 4),
                               rtol=0, atol=0)
    wide = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(ot.rotate(wide[:, 2:10], theta, 4),
                               ot.rotate(wide[:, 2:10].contiguous(), theta, 4), rtol=0, atol=0)
