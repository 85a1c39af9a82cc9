"""bfloat16 activations on the CPU through oft.torch (docs/bf16.md): the Float arithmetic is the
float32 path rounded once, bit for bit; DotProduct (vdpbf16ps) is within the documented bound and
sums the same gradient; bfloat16 weights train; bad input is refused by name."""
import pytest
import torch

import oft
import oft._core
import oft.torch as ot

HAS_DOT = oft._core.has_bf16_dot_product
U_FLOAT = 2.0**-24


@pytest.fixture
def arithmetic():
    """Restores the process-wide setting after a test that changes it."""
    saved = ot.get_bf16_arithmetic()
    yield
    ot.set_bf16_arithmetic(saved)


def data(tokens, d, b, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g).bfloat16()
    dy = torch.randn(tokens, d, generator=g).bfloat16()
    theta = scale * torch.randn(d // b, b * (b - 1) // 2, generator=g)
    return x, dy, theta


def integers(shape, seed):
    """Entries in -4..4: exact in bfloat16, and every sum of G over these tokens exact in float."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, shape, generator=g).bfloat16()


def forward_backward(x, theta, dy, b):
    x = x.clone().requires_grad_()
    theta = theta.clone().requires_grad_()
    y = ot.rotate(x, theta, b)
    y.backward(dy)
    return y.detach(), x.grad, theta.grad


def same_bits(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a,
                                              b.view(torch.int16) if b.dtype == torch.bfloat16 else b)


@pytest.mark.parametrize("b", [1, 3, 16, 32, 33])
def test_float_arithmetic_is_the_float32_path_rounded_once(b, arithmetic):
    ot.set_bf16_arithmetic("float")
    x, dy, theta = data(41, 4 * b, b, seed=b)
    y, dx, dtheta = forward_backward(x, theta, dy, b)
    y32, dx32, dtheta32 = forward_backward(x.float(), theta, dy.float(), b)
    assert y.dtype == dx.dtype == torch.bfloat16 and dtheta.dtype == torch.float32
    assert same_bits(y, y32.bfloat16())
    assert same_bits(dx, dx32.bfloat16())
    assert torch.equal(dtheta, dtheta32)


def bound(x, rotations, dot_product):
    """Entrywise bound on |Y - X R| (docs/bf16.md) for bfloat16 x and the operator's float R."""
    x = x.double()
    b = rotations.shape[-1]
    blocks = x.view(x.shape[0], -1, b).transpose(0, 1)                      # [r, N, b]
    exact = torch.bmm(blocks, rotations).transpose(0, 1).reshape(x.shape)  # X R, exact in double
    if not dot_product:  # the Float arithmetic: float accumulation, then one rounding
        gamma = b * U_FLOAT / (1 - b * U_FLOAT)
        abs_xr = torch.bmm(blocks.abs(), rotations.abs()).transpose(0, 1).reshape(x.shape)
        return exact, 2.0**-8 * exact.abs() + 2 * gamma * abs_xr
    d = rotations - torch.eye(b, dtype=torch.float64)
    u = 2.0**-8 + 2.0**-22
    gamma = (b + 1) * U_FLOAT / (1 - (b + 1) * U_FLOAT)
    xd = torch.bmm(blocks.abs(), d.abs()).transpose(0, 1).reshape(x.shape)
    flush = (2 * b + 4) * 2.0**-126 * (1 + d.abs().max().item())
    e = u * xd + gamma * (x.abs() + (1 + u) * xd) + flush
    return exact, 2.0**-8 * (exact.abs() + e) + e


@pytest.mark.parametrize("name", ["float", "dot_product"])
@pytest.mark.parametrize("b", [2, 16, 32, 64])
def test_outputs_are_within_the_documented_bound(name, b, arithmetic):
    if name == "dot_product" and not HAS_DOT:
        pytest.skip("this build of oft._core has no AVX512_BF16 (has_bf16_dot_product is False)")
    ot.set_bf16_arithmetic(name)
    x, dy, theta = data(97, 4 * b, b, seed=100 + b)
    y, dx, _ = forward_backward(x, theta, dy, b)
    rotations = ot.rotation_blocks(theta, b).double()  # the float32 R the kernels use
    exact, limit = bound(x, rotations, name == "dot_product")
    assert ((y.double() - exact).abs() <= limit).all(), (y.double() - exact).abs().max().item()
    exact_dx, limit_dx = bound(dy, rotations.transpose(1, 2), name == "dot_product")
    assert ((dx.double() - exact_dx).abs() <= limit_dx).all()
    # The bound is not vacuous: the error reaches a good part of it somewhere.
    assert ((y.double() - exact).abs() / limit).max() > 0.1


@pytest.mark.skipif(not HAS_DOT, reason="this build of oft._core has no AVX512_BF16")
@pytest.mark.parametrize("tokens", [1, 48, 2049])
def test_dot_product_sums_the_same_gradient(tokens, arithmetic):
    """Integer data: every sum of G is exact in float, so dtheta equals the Float arithmetic's."""
    b, d = 32, 128
    x, dy = integers((tokens, d), 1), integers((tokens, d), 2)
    theta = data(1, d, b, seed=3)[2]
    ot.set_bf16_arithmetic("dot_product")
    _, _, dtheta_dot = forward_backward(x, theta, dy, b)
    ot.set_bf16_arithmetic("float")
    _, _, dtheta_float = forward_backward(x, theta, dy, b)
    assert torch.equal(dtheta_dot, dtheta_float)


def test_bfloat16_weights_get_bfloat16_gradients(arithmetic):
    """A bfloat16 parameter (a PEFT model cast with .to(torch.bfloat16)): R and dtheta in float32,
    dtheta returned rounded to bfloat16."""
    ot.set_bf16_arithmetic("float")
    b = 16
    x, dy, theta = data(30, 64, b, seed=7)
    theta16 = theta.bfloat16()
    y, dx, dtheta = forward_backward(x, theta16, dy, b)
    y32, dx32, dtheta32 = forward_backward(x, theta16.float(), dy, b)
    assert dtheta.dtype == torch.bfloat16
    assert same_bits(y, y32) and same_bits(dx, dx32)
    assert same_bits(dtheta, dtheta32.bfloat16())

    # Training a bfloat16 module towards a rotation it can represent drives the loss down.
    module = ot.OFTRotation(64, b, dtype=torch.bfloat16)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    target = ot.rotate(x.float(), data(1, 64, b, seed=8, scale=0.05)[2], b).bfloat16()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (module(x).float() - target.float()).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0], losses


def test_strided_rows_and_leading_dimensions(arithmetic):
    b, d = 16, 64
    wide = data(24, 2 * d, b, seed=9)[0]
    x = wide[:, :d]  # row stride 2d: used in place
    theta = data(1, d, b, seed=10)[2]
    for name in ("float", "dot_product") if HAS_DOT else ("float",):
        ot.set_bf16_arithmetic(name)
        y = ot.rotate(x, theta, b)
        assert same_bits(y, ot.rotate(x.contiguous(), theta, b))
        y3 = ot.rotate(x.contiguous().view(2, 12, d), theta, b)
        assert y3.shape == (2, 12, d) and same_bits(y3.view(24, d), y)


def test_bad_input_is_refused_by_name(arithmetic):
    b, d = 16, 64
    x, _, theta = data(5, d, b, seed=11)
    with pytest.raises(TypeError, match=r"float16; oft's CPU kernels take float32, float64 or "
                                        r"bfloat16"):
        ot.rotate(x.half(), theta, b)
    with pytest.raises(TypeError, match=r"x \[5, 64\] is torch.bfloat16 but theta \[4, 120\] is "
                                        r"torch.float64"):
        ot.rotate(x, theta.double(), b)
    with pytest.raises(ValueError, match="'fast' is not one of 'float', 'dot_product'"):
        ot.set_bf16_arithmetic("fast")
    if not HAS_DOT:
        with pytest.raises(ValueError, match="needs oft._core built with AVX512_BF16"):
            ot.set_bf16_arithmetic("dot_product")
    # The operators underneath: bfloat16 activations are the float32 operator's only.
    op32 = oft.RotationFloat32(d, b, False, oft.Policy.cayley_neumann(3))
    op64 = oft.RotationFloat64(d, b, False, oft.Policy.cayley_neumann(3))
    op32.set_generators(theta)
    y = torch.empty(5, d, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"y \[5, 64\] is float32, expected bfloat16"):
        op32.apply(x, y, False)
    with pytest.raises(TypeError, match=r"x \[5, 64\] is bfloat16, expected float64"):
        op64.apply(x, torch.empty(5, d, dtype=torch.bfloat16), False)
    with pytest.raises(TypeError, match=r"dtheta \[4, 120\] is bfloat16, expected float32"):
        op32.backward(x, x, None, theta.bfloat16())
    with pytest.raises(ValueError, match="bf16_arithmetic must be 'float' or 'dot_product'"):
        op32.bf16_arithmetic = "bogus"
    assert op32.bf16_arithmetic == ("dot_product" if HAS_DOT else "float")
    assert not hasattr(op64, "bf16_arithmetic")


def test_rotation_wrapper_takes_bfloat16_activations():
    """oft.Rotation (in-place API over arrays): a float32 operator with bfloat16 x, y, dy, dx."""
    b, d = 16, 64
    x, dy, theta = data(9, d, b, seed=12)
    rot = oft.Rotation(d, b, dtype="float32")
    rot.bf16_arithmetic = "float"
    assert rot.bf16_arithmetic == "float"
    rot.set_generators(theta)
    y, dx = torch.empty_like(x), torch.empty_like(dy)
    dtheta = torch.empty_like(theta)
    rot.apply(x, y)
    rot.backward(x, dy, dx, dtheta)
    y32, dx32, dtheta32 = torch.empty(9, d), torch.empty(9, d), torch.empty_like(theta)
    rot.apply(x.float(), y32)
    rot.backward(x.float(), dy.float(), dx32, dtheta32)
    assert same_bits(y, y32.bfloat16()) and same_bits(dx, dx32.bfloat16())
    assert torch.equal(dtheta, dtheta32)


def test_rotation_blocks_of_a_bfloat16_weight():
    """OFTRotation(dtype=bfloat16).rotation_matrices(): R in float32 from the widened weight,
    rounded once, differentiable."""
    b = 8
    module = ot.OFTRotation(32, b, dtype=torch.bfloat16)
    with torch.no_grad():
        module.weight.copy_(data(1, 32, b, seed=13, scale=0.1)[2])
    blocks = module.rotation_matrices()
    assert blocks.dtype == torch.bfloat16 and blocks.shape == (4, b, b)
    expected = ot.rotation_blocks(module.weight.detach().float(), b)
    assert same_bits(blocks, expected.bfloat16())
    blocks.float().sum().backward()
    assert module.weight.grad.dtype == torch.bfloat16 and module.weight.grad.abs().sum() > 0
