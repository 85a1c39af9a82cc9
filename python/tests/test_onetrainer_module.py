"""oft.onetrainer.OFT against the reference of OneTrainer's and the ComfyUI-OFTv2 loader's math
(tests/dialects/make_onetrainer_fixtures.py: rotation(), merge() and cans_gradient(), written from
their code; the test-only reference of the C++ fixtures, neither package is on PyPI): merged
weights, forwards and gradients in double, Linear and Conv2d with a non-square kernel,
scaled_oft on and off, cans_oft in both orders, a shared block, strengths; the file names
oft.io reads back; bad input."""
import importlib.util
import pathlib

import pytest
import torch

import oft.onetrainer as oto


def _reference():
    path = (pathlib.Path(__file__).resolve().parents[2] / "tests" / "dialects"
            / "make_onetrainer_fixtures.py")
    spec = importlib.util.spec_from_file_location("oft_onetrainer_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference()

CASES = {
    # name: (base, input shape, block size, shared)
    "linear": (lambda: torch.nn.Linear(24, 6), (3, 5, 24), 4, False),
    "linear-shared": (lambda: torch.nn.Linear(24, 6), (7, 24), 6, True),
    "conv2d-3x2": (lambda: torch.nn.Conv2d(3, 5, (3, 2), stride=2, padding=1), (2, 3, 9, 7), 6,
                   False),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
@pytest.mark.parametrize("strength", [1.0, 0.5, -0.75])
def test_equals_the_loaders_math(name, scaled, strength):
    make, shape, b, shared = CASES[name]
    torch.manual_seed(0)
    base = make().double()
    layer = oto.OFT(base, b, scaled=scaled, block_share=shared, strength=strength)
    with torch.no_grad():
        layer.oft_R.weight.copy_(0.3 * torch.randn_like(layer.oft_R.weight))
    theta = layer.oft_R.weight.detach().clone().requires_grad_()
    rot = REF.rotation(theta, b, scaled, None, False, None)
    want = REF.merge(base.weight, rot, strength)
    got = layer.merged_weight()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn_like(got)
    (got * cot).sum().backward()
    (want * cot).sum().backward()
    torch.testing.assert_close(layer.oft_R.weight.grad, theta.grad, rtol=1e-11, atol=1e-11)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        out = (torch.nn.functional.linear(x, want, base.bias) if name.startswith("linear")
               else base._conv_forward(x, want, base.bias))
        torch.testing.assert_close(layer(x), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "linear-shared", "conv2d-3x2"])
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
def test_cans_equals_the_loaders_math(name, scaled):
    # The loader's order (7 steps on I + Q, then squared), merged at strengths 1 and 0.5.
    make, shape, b, shared = CASES[name]
    torch.manual_seed(3)
    base = make().double()
    for strength in (1.0, 0.5):
        layer = oto.OFT(base, b, scaled=scaled, block_share=shared, strength=strength, cans=True)
        with torch.no_grad():
            layer.oft_R.weight.copy_(0.5 * torch.randn_like(layer.oft_R.weight))
        theta = layer.oft_R.weight.detach()
        want = REF.merge(base.weight, REF.rotation(theta, b, scaled, None, True, None), strength)
        # Two evaluations of the same 7 cubic steps, coefficients rounded apart: a few ulps.
        torch.testing.assert_close(layer.merged_weight(), want, rtol=1e-13, atol=1e-13)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        out = (torch.nn.functional.linear(x, want, base.bias) if name.startswith("linear")
               else base._conv_forward(x, want, base.bias))
        torch.testing.assert_close(layer(x), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["square_after", "square_first"])
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
@pytest.mark.parametrize("spread", [0.5, 8.0], ids=["converged", "unconverged"])
def test_cans_rotations_and_gradients_equal_onetrainers(order, scaled, spread):
    # With small generators 7 steps reach the polar factor and the two orders agree to
    # rounding; with large ones (||Q||_2 ~ 20) they have not converged and differ: each order
    # must then be its own reference's.
    torch.manual_seed(4)
    layer = oto.OFT(torch.nn.Linear(24, 6).double(), 4, scaled=scaled, cans=True,
                    cans_order=order)
    with torch.no_grad():
        layer.oft_R.weight.copy_(spread * torch.randn_like(layer.oft_R.weight))
    theta = layer.oft_R.weight.detach()
    square_first = order == "square_first"
    r = layer.rotations()
    want = REF.rotation(theta, 4, scaled, None, True, None, square_first=square_first)
    torch.testing.assert_close(r, want, rtol=1e-12, atol=1e-12)
    if spread > 1 and not scaled:
        other = REF.rotation(theta, 4, scaled, None, True, None, square_first=not square_first)
        assert (r - other).abs().max() > 1e-3
    # d sum(C * R) / d theta, ||G||_inf detached as in OneTrainer, by torch autograd on the
    # reference: the same chain, so to rounding.
    c = torch.randn_like(r)
    (r * c).sum().backward()
    want_grad = REF.cans_gradient(theta, 4, scaled, c, square_first)
    torch.testing.assert_close(layer.oft_R.weight.grad, want_grad, rtol=1e-10, atol=1e-10)


def test_conv_is_ofts_convolution_with_negated_generators():
    import oft.torch as ot
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, (3, 2), padding=1).double()
    layer = oto.OFT(conv, 6)
    ours = ot.OFTConv(conv, 6, policy="peft_neumann", num_terms=5)
    with torch.no_grad():
        layer.oft_R.weight.copy_(0.3 * torch.randn_like(layer.oft_R.weight))
        ours.weight.copy_(-layer.oft_R.weight)
    torch.testing.assert_close(layer.merged_weight(), ours.merged_weight(), rtol=1e-13,
                               atol=1e-13)


def test_adapter_state_dict_is_what_oft_reads_as_onetrainer(tmp_path):
    import oft
    from safetensors.torch import save_file
    torch.manual_seed(2)
    layer = oto.OFT(torch.nn.Linear(24, 6), 4, scaled=True)
    with torch.no_grad():
        layer.oft_R.weight.copy_(0.2 * torch.randn_like(layer.oft_R.weight))
    tensors = layer.adapter_state_dict("lora_unet_proj_in")
    assert set(tensors) == {"lora_unet_proj_in.oft_R.weight", "lora_unet_proj_in.oft_R.scaled_oft"}
    cans = oto.OFT(torch.nn.Linear(24, 6), 4, cans=True).adapter_state_dict("m")
    assert set(cans) == {"m.oft_R.weight", "m.oft_R.cans_oft"}
    path = tmp_path / "ot.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    info = oft.inspect_adapter(str(path))
    assert info["dialect"] == "onetrainer-oft" and info["side"] == "input"
    (module,) = info["modules"]
    assert module["name"] == "lora_unet_proj_in" and module["scaled_oft"] is True
    assert (module["rows"], module["block_size"]) == (6, 4) and module["rho"] > 0


def test_bad_input():
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear, Conv1d, Conv2d or "
                                        "Conv3d, got Embedding"):
        oto.OFT(torch.nn.Embedding(4, 4), 2)
    with pytest.raises(ValueError, match=r"block_size 5 must be a positive int dividing the 18 "
                                         r"input features of Conv2d\(4, 3, 3, 2\)"):
        oto.OFT(torch.nn.Conv2d(3, 4, (3, 2)), 5)
    with pytest.raises(ValueError, match="block_size must be >= 2, got 1"):
        oto.OFT(torch.nn.Linear(4, 4), 1, scaled=True)
    with pytest.raises(ValueError, match="cans_order must be one of square_after, square_first, "
                                         "got 'x'"):
        oto.OFT(torch.nn.Linear(4, 4), 2, cans=True, cans_order="x")
