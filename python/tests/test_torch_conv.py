"""oft.torch.OFTConv: the layer against its definition (each patch rotated before the base's
weights meet it, docs/conventions.md section 14) on inputs larger than the kernel, non-square
kernels, stride, dilation, padding and groups; merge; gradcheck in double; bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import oft.torch as ot


def _patches(conv, x):
    """The patches of x as rows [N * positions, groups, K], by tensor.unfold (not the layer's
    code path): rows in (n, z, y, x) order, each patch in PyTorch's weight order (c, a, i, j)."""
    dims = x.dim() - 2
    if conv.padding_mode == "zeros":
        pad = [p for p in reversed(conv.padding) for _ in range(2)]
        x = F.pad(x, pad)
    else:
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    for axis in range(dims):
        k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
        x = x.unfold(2 + axis, d * (k - 1) + 1, s)  # the span, then every d-th entry of it
    index = (Ellipsis,) + tuple(slice(None, None, d) for d in conv.dilation)
    x = x[index]  # [N, C, out..., k...]
    n, c = x.shape[:2]
    out = x.shape[2:2 + dims]
    order = [0] + list(range(2, 2 + dims)) + [1] + list(range(2 + dims, 2 + 2 * dims))
    rows = x.permute(order).reshape(n * math.prod(out), conv.groups, -1)
    return rows, n, out


def _reference(layer, x):
    """z = (p R) W_flat^T + bias for every patch p of every group, R from rotation_blocks."""
    conv, rot = layer.base, layer.rotation
    rows, n, out = _patches(conv, x)
    blocks = rot.rotation_matrices().to(x.dtype)
    if rot.block_share:
        blocks = blocks.expand(rot.r, -1, -1)
    b = rot.block_size
    rotated = torch.einsum("pgrk,rkc->pgrc", rows.reshape(*rows.shape[:2], rot.r, b), blocks)
    rotated = rotated.reshape(rows.shape)
    o = conv.out_channels
    w = conv.weight.reshape(conv.groups, o // conv.groups, -1)
    z = torch.einsum("pgk,gok->pgo", rotated, w).reshape(-1, o)
    if conv.bias is not None:
        z = z + conv.bias
    return z.reshape(n, *out, o).movedim(-1, 1)


def _randomize(layer, scale=0.3):
    with torch.no_grad():
        layer.weight.copy_(scale * torch.randn_like(layer.weight))
    return layer


CASES = {
    # name: (constructor, input shape, block size)
    "conv2d-3x5-stride-dilation-padding": (
        lambda: torch.nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        (2, 4, 11, 13), 6),
    "conv2d-groups-2": (
        lambda: torch.nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2), (2, 4, 9, 7), 6),
    "conv2d-depthwise": (
        lambda: torch.nn.Conv2d(3, 6, (2, 3), padding=1, groups=3, bias=False), (1, 3, 6, 8), 3),
    "conv2d-1x1": (lambda: torch.nn.Conv2d(8, 5, 1), (2, 8, 5, 4), 4),
    "conv2d-reflect": (
        lambda: torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (1, 2, 7, 6), 6),
    "conv1d-k5-stride-dilation": (
        lambda: torch.nn.Conv1d(3, 4, 5, stride=2, padding=3, dilation=2), (2, 3, 23), 5),
    "conv3d-2x3x2": (
        lambda: torch.nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1)),
        (1, 2, 5, 7, 4), 4),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("settings", [dict(policy="peft_neumann"), dict(policy="cayley")],
                         ids=lambda s: s["policy"])
def test_layer_is_the_rotation_of_each_patch(name, settings):
    make, shape, b = CASES[name]
    layer = _randomize(ot.OFTConv(make().double(), b, **settings))
    x = torch.randn(*shape, dtype=torch.float64)
    z = layer(x)
    assert z.shape == layer.base(x).shape
    torch.testing.assert_close(z, _reference(layer, x), rtol=1e-12, atol=1e-12)


def test_the_transposed_rotation_would_be_caught():
    # Merging with W_flat R instead of W_flat R^T is another map; the reference must see it.
    make, shape, b = CASES["conv2d-3x5-stride-dilation-padding"]
    layer = _randomize(ot.OFTConv(make().double(), b))
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.neg_()
        wrong = layer(x)
        layer.weight.neg_()
    assert (wrong - _reference(layer, x)).abs().max() > 1e-2


def test_shared_generator():
    conv = torch.nn.Conv2d(4, 3, 3, padding=1).double()
    layer = _randomize(ot.OFTConv(conv, 6, block_share=True))
    assert layer.weight.shape == (1, 15)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


def test_zero_generators_give_the_base_exactly():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    layer = ot.OFTConv(conv, 4)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(layer(x), conv(x))


@pytest.mark.parametrize("name", ["conv2d-groups-2", "conv1d-k5-stride-dilation"])
def test_merge_is_the_same_map(name):
    make, shape, b = CASES[name]
    layer = _randomize(ot.OFTConv(make(), b), 0.2)
    merged = layer.merge()
    assert type(merged) is type(layer.base) and merged is not layer.base
    x = torch.randn(*shape)
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-6, atol=1e-6)
    # the base is untouched
    assert not torch.equal(merged.weight, layer.base.weight)


def test_bfloat16_base_keeps_float32_generators():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1).double()
    layer64 = _randomize(ot.OFTConv(conv, 6), 0.2)
    layer16 = ot.OFTConv(torch.nn.Conv2d(4, 6, 3, padding=1).to(torch.bfloat16), 6)
    with torch.no_grad():
        layer16.base.weight.copy_(conv.weight)
        layer16.base.bias.copy_(conv.bias)
        layer16.weight.copy_(layer64.weight)
    assert layer16.weight.dtype == torch.float32
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    z16 = layer16(x.to(torch.bfloat16))
    assert z16.dtype == torch.bfloat16
    # bf16 weights, input and output: a few bf16 ulps of the output's scale
    torch.testing.assert_close(z16.double(), _reference(layer64, x), rtol=0.03, atol=0.03)


def test_gradcheck_in_double():
    conv = torch.nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=1, groups=1).double()
    layer = _randomize(ot.OFTConv(conv, 4))
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(inp, theta):  # theta through the layer's own parameter
        return torch.func.functional_call(layer, {"rotation.weight": theta}, (inp,))

    theta = layer.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x, theta))


def test_training_updates_only_the_generators():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    base_weight = conv.weight.detach().clone()
    layer = ot.OFTConv(conv, 4)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["rotation.weight"]
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(2, 4, 6, 6), torch.randn(2, 6, 6, 6)
    loss = F.mse_loss(layer(x), target)
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(conv.weight, base_weight)
    assert F.mse_loss(layer(x), target) < loss


def test_bad_input():
    with pytest.raises(TypeError, match="base must be a torch.nn.Conv1d, Conv2d or Conv3d, got Linear"):
        ot.OFTConv(torch.nn.Linear(4, 4), 2)
    with pytest.raises(TypeError, match="got ConvTranspose2d"):
        ot.OFTConv(torch.nn.ConvTranspose2d(4, 4, 3), 2)
    with pytest.raises(ValueError, match=r"block_size 5 does not divide the patch length "
                                         r"K = \(in_channels / groups\) \* kernel = 2\*3\*3 = 18"):
        ot.OFTConv(torch.nn.Conv2d(4, 6, 3, groups=2), 5)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        ot.OFTConv(torch.nn.Conv2d(4, 6, 3), 0)
    with pytest.raises(TypeError, match="is torch.float16"):
        ot.OFTConv(torch.nn.Conv2d(4, 6, 3).half(), 4)
