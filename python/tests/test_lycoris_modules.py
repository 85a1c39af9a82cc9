"""oft.lycoris.DiagOFT and BOFT against lycoris-lora 4.1.3's own DiagOFTModule and
ButterflyOFTModule (PyPI): the same outputs and the same gradients for oft_blocks and rescale,
Linear and Conv2d (a non-square kernel), weight and bypass modes, constraint binding and not,
rescale, multipliers; gradcheck in double; LyCORIS reads back what the modules trained; bad
input."""
import pytest
import torch

import oft.lycoris as ol

lycoris_diag_oft = pytest.importorskip("lycoris.modules.diag_oft")  # scripts/python_requirements.txt
lycoris_boft = pytest.importorskip("lycoris.modules.boft")

OURS = {"diag-oft": ol.DiagOFT, "boft": ol.BOFT}
THEIRS = {"diag-oft": lycoris_diag_oft.DiagOFTModule, "boft": lycoris_boft.ButterflyOFTModule}


def _bases():
    return {
        "linear": (lambda: torch.nn.Linear(24, 16), (5, 3, 24)),
        "conv2d": (lambda: torch.nn.Conv2d(3, 16, (3, 2), stride=2, padding=1), (2, 3, 9, 7)),
    }


def _pair(kind, block_size, alpha, rescaled, multiplier, bypass, seed=0, theirs_bypass=None,
          theirs_bias=True, algo="diag-oft"):
    """(oft's layer, LyCORIS's module) over copies of one seeded base, with the same random
    oft_blocks (and rescale). LyCORIS's module runs in bypass mode when ``theirs_bypass`` (default:
    ``bypass``) and over a copy of the base without its bias when not ``theirs_bias``."""
    torch.manual_seed(seed)
    make, shape = _bases()[kind]
    base = make()
    ours = OURS[algo](base, block_size, alpha=alpha, rescaled=rescaled, multiplier=multiplier,
                      bypass=bypass)
    theirs_base = make()
    theirs_base.load_state_dict(base.state_dict())
    if not theirs_bias:
        theirs_base.bias = None
    theirs = THEIRS[algo](
        "lora_test", theirs_base, multiplier=multiplier, lora_dim=block_size, constraint=alpha,
        rescaled=rescaled, bypass_mode=bypass if theirs_bypass is None else theirs_bypass)
    assert (theirs.block_num, theirs.block_size) == (ours.block_num, ours.block_size)
    assert theirs.oft_blocks.shape == ours.oft_blocks.shape
    with torch.no_grad():
        ours.oft_blocks.copy_(0.1 * torch.randn_like(ours.oft_blocks))
        theirs.oft_blocks.copy_(ours.oft_blocks)
        if rescaled:
            ours.rescale.copy_(1 + 0.2 * torch.randn_like(ours.rescale))
            theirs.rescale.copy_(ours.rescale)
    x = torch.randn(*shape)
    return ours, theirs, x


# alpha 0: no constraint; 0.002 * out binds (||Q||_F is about 0.1 sqrt(2 k b (b-1)) here, times
# sqrt(m) for BOFT); 1.0 does not.
SETTINGS = [
    dict(alpha=0.0, rescaled=False, multiplier=1.0),
    dict(alpha=0.002, rescaled=False, multiplier=1.0),
    dict(alpha=1.0, rescaled=True, multiplier=1.0),
    dict(alpha=0.002, rescaled=True, multiplier=1.0),
    dict(alpha=0.002, rescaled=False, multiplier=0.5),
    dict(alpha=0.0, rescaled=True, multiplier=0.7),
]


def _constraint_binds(layer):
    q = layer.oft_blocks - layer.oft_blocks.transpose(1, 2)
    c = float(layer.alpha) * layer.base.weight.shape[0]
    return c > 0 and float(torch.norm(q.detach())) + 1e-8 > c


# float32 on both sides; LyCORIS inverts I - Q explicitly, oft solves by LU, and they sum
# W^T M in another order: a few float32 ulps of the outputs' scale (|z| up to about 2 here;
# measured worst 3.2e-7 of the largest output, about 3 ulps).
TOL = dict(rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("bypass", [False, True], ids=["weight", "bypass"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_outputs_and_gradients_equal_lycoris(algo, kind, bypass, settings):
    # diag-OFT's bypass raises at a multiplier other than 1 (test_lycoris_bypass_blend_raises);
    # BOFT's runs.
    blended_bypass = algo == "diag-oft" and bypass and settings["multiplier"] != 1.0
    # LyCORIS's bypass raises at a multiplier other than 1 (test_lycoris_bypass_blend_raises):
    # there the reference is its weight mode over the base without its bias, plus the bias
    # through its own M = s R + (1 - s) I and rescale, which is what its bypass computes at 1.
    ours, theirs, x = _pair(kind, 4, bypass=bypass, theirs_bypass=bypass and not blended_bypass,
                            theirs_bias=not blended_bypass, algo=algo, **settings)
    assert _constraint_binds(ours) == (settings["alpha"] == 0.002)
    z, z_ref = ours(x), theirs(x)
    if blended_bypass:
        s = settings["multiplier"]
        blocks = s * theirs.get_r() + (1 - s) * theirs.I
        bias_out = torch.einsum("kn,knm->km", ours.base.bias.view(theirs.block_num, -1), blocks)
        bias_out = bias_out.reshape(-1)
        if settings["rescaled"]:
            bias_out = theirs.rescale.reshape(-1) * bias_out
        z_ref = z_ref + (bias_out if kind == "linear" else bias_out.view(1, -1, 1, 1))
    torch.testing.assert_close(z, z_ref, **TOL)
    cot = torch.randn_like(z)
    (z * cot).sum().backward()
    (z_ref * cot).sum().backward()
    scale = theirs.oft_blocks.grad.abs().max()
    torch.testing.assert_close(ours.oft_blocks.grad, theirs.oft_blocks.grad, rtol=1e-5,
                               atol=1e-5 * float(scale))
    if settings["rescaled"]:
        torch.testing.assert_close(ours.rescale.grad, theirs.rescale.grad, rtol=1e-5, atol=1e-5)
    assert ours.base.weight.grad is None


def test_lycoris_bypass_blend_raises():
    # lycoris-lora 4.1.3, modules/diag_oft.py, _bypass_forward: at a multiplier other than 1 it
    # calls .view on einsum's non-contiguous output. If a later version runs, this fails and the
    # reference above should become its bypass itself.
    _, theirs, x = _pair("linear", 4, 0.0, False, 0.5, bypass=True)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        theirs(x)


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_weight_and_bypass_modes_differ_only_by_the_rotated_bias(algo):
    ours, _, x = _pair("linear", 4, 0.0, True, 1.0, bypass=False, algo=algo)
    bypass = OURS[algo](ours.base, 4, rescaled=True, bypass=True)
    with torch.no_grad():
        bypass.oft_blocks.copy_(ours.oft_blocks)
        bypass.rescale.copy_(ours.rescale)
        ours.base.bias.zero_()
    torch.testing.assert_close(ours(x), bypass(x), **TOL)


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_zero_blocks_give_the_base(algo):
    for kind in ("linear", "conv2d"):
        make, shape = _bases()[kind]
        base = make()
        x = torch.randn(*shape)
        torch.testing.assert_close(OURS[algo](base, 4, alpha=0.01)(x), base(x),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
@pytest.mark.parametrize("bypass", [False, True], ids=["weight", "bypass"])
def test_gradcheck_in_double(algo, bypass):
    # The constraint binding (its scale's gradient included), rescale and a blend.
    base = torch.nn.Conv2d(2, 4, (2, 3), padding=1).double()
    layer = OURS[algo](base, 2, alpha=0.05, rescaled=True, multiplier=0.8, bypass=bypass)
    blocks = (0.3 * torch.randn_like(layer.oft_blocks)).requires_grad_()
    rescale = (1 + 0.1 * torch.randn(4, 1, 1, 1, dtype=torch.float64)).requires_grad_()
    # x's gradient is the base convolution's own (PyTorch's); the parameters' are oft's.
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.oft_blocks.copy_(blocks)
    assert _constraint_binds(layer)

    def f(inp, b, r):
        return torch.func.functional_call(layer, {"oft_blocks": b, "rescale": r}, (inp,))

    assert torch.autograd.gradcheck(f, (x, blocks, rescale))


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_lycoris_reads_back_what_oft_trained(tmp_path, algo):
    torch.manual_seed(3)
    base = torch.nn.Conv2d(3, 8, (3, 2), padding=1)
    layer = OURS[algo](base, 2, alpha=0.05, rescaled=True)
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    x, target = torch.randn(2, 3, 6, 6), torch.randn(2, 8, 6, 7)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    from safetensors.torch import load_file, save_file
    path = tmp_path / "lyco.safetensors"
    save_file({k: v.contiguous() for k, v in layer.adapter_state_dict("lora_unet_conv").items()},
              str(path))
    loaded = load_file(str(path))
    assert set(loaded) == {"lora_unet_conv.oft_blocks", "lora_unet_conv.alpha",
                           "lora_unet_conv.rescale"}
    theirs_base = torch.nn.Conv2d(3, 8, (3, 2), padding=1)
    theirs_base.load_state_dict(base.state_dict())
    with torch.no_grad():  # as LyCORIS's own loader (create_lycoris_from_weights) calls it
        theirs = THEIRS[algo].make_module_from_state_dict(
            "lora_unet_conv", theirs_base, loaded["lora_unet_conv.oft_blocks"],
            loaded["lora_unet_conv.rescale"], loaded["lora_unet_conv.alpha"])
        torch.testing.assert_close(theirs(x), layer(x), **TOL)
        merged, _ = theirs.get_merged_weight()
        torch.testing.assert_close(merged.reshape(base.weight.shape), layer.merged_weight(), **TOL)


def test_bad_input():
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear, Conv1d, Conv2d or "
                                        "Conv3d, got Embedding"):
        ol.DiagOFT(torch.nn.Embedding(4, 4), 2)
    with pytest.raises(ValueError, match=r"block_size 3 must be a positive int dividing the 8 "
                                         r"output channels of Linear\(8, 4\)"):
        ol.DiagOFT(torch.nn.Linear(4, 8), 3)
    with pytest.raises(ValueError, match="block_size 4 exceeds the block count 2 "
                                         r"\(8 output channels\); LyCORIS always has"):
        ol.DiagOFT(torch.nn.Linear(4, 8), 4)
    with pytest.raises(TypeError, match="is torch.float16"):
        ol.DiagOFT(torch.nn.Linear(4, 8).half(), 2)
    with pytest.raises(ValueError, match=r"block_size 4 must be an even int dividing the 24 output "
                                         r"channels of Linear\(24, 8\) into a power-of-two"):
        ol.BOFT(torch.nn.Linear(8, 24), 4)  # 6 blocks
    with pytest.raises(ValueError, match="block_size 3 must be an even int"):
        ol.BOFT(torch.nn.Linear(8, 24), 3)
    with pytest.raises(TypeError, match="got Embedding"):
        ol.BOFT(torch.nn.Embedding(4, 4), 2)


def _kohya_reference():
    """tests/dialects/make_fixtures.py's kohya_reference_merge: kohya sd-scripts networks/oft.py
    (commit 2d8ee3c28007393386528cfeec0a9b714dafd85b) restated from its formulas, the reference
    of the C++ kohya fixtures (kohya is not on PyPI)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "tests" / "dialects" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("oft_dialect_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kohya_reference_merge


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("alpha,multiplier", [(0.002, 1.0), (1.0, 0.6), (0.0, 1.0)],
                         ids=["binds", "inactive-blend", "alpha0"])
def test_kohya_rule_equals_kohyas_formulas(kind, alpha, multiplier):
    merge = _kohya_reference()
    torch.manual_seed(1)
    make, shape = _bases()[kind]
    base = make()
    # kohya's dim is the block count: 8 blocks of 2 over 16 channels (b > k is allowed here)
    layer = ol.DiagOFT(base, 2, alpha=alpha, multiplier=multiplier, constraint_rule="kohya")
    with torch.no_grad():
        layer.oft_blocks.copy_(0.1 * torch.randn_like(layer.oft_blocks))
    blocks = layer.oft_blocks.detach().clone().requires_grad_()
    want, binds = merge(base.weight, blocks, alpha, multiplier)
    assert binds == (alpha == 0.002 or alpha == 0.0)
    got = layer.merged_weight()
    torch.testing.assert_close(got, want, **TOL)
    if alpha == 0.0:  # kohya's alpha 0: the adapter does nothing
        torch.testing.assert_close(got, base.weight, rtol=0, atol=1e-6)
    cot = torch.randn_like(got)
    (got * cot).sum().backward()
    (want * cot).sum().backward()
    torch.testing.assert_close(layer.oft_blocks.grad, blocks.grad, rtol=1e-5,
                               atol=1e-5 * float(blocks.grad.abs().max()))
    x = torch.randn(*shape)
    with torch.no_grad():
        out = (torch.nn.functional.linear(x, want, base.bias) if kind == "linear"
               else base._conv_forward(x, want, base.bias))
        torch.testing.assert_close(layer(x), out, **TOL)


def test_kohya_rule_refuses_what_kohya_lacks():
    with pytest.raises(ValueError, match="kohya's OFT has no rescale and no bypass mode"):
        ol.DiagOFT(torch.nn.Linear(4, 8), 2, rescaled=True, constraint_rule="kohya")
    with pytest.raises(ValueError, match="constraint_rule must be 'lycoris' or 'kohya', got 'x'"):
        ol.DiagOFT(torch.nn.Linear(4, 8), 2, constraint_rule="x")
