"""The trainable dialect modules built from real files (from_adapter): the C++ dialect tests'
fixtures, whose expected files hold what LyCORIS itself (lycoris-lora 4.1.3, make_fixtures.py),
kohya's formulas and OneTrainer's/ComfyUI-OFTv2's math computed from those very files: merged
weights at every multiplier, forwards and LyCORIS's autograd gradients. And the refusals."""
import json
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import oft.lycoris as ol
import oft.onetrainer as oto

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "dialects" / "fixtures"
GRADIENT_MULTIPLIERS = [0, 1, 3]  # make_fixtures.py's indices into the multipliers

# float32 on both sides (the fixtures are LyCORIS's float32 numbers): a few ulps of |W| ~ 1;
# forwards sum `in` products more.
MERGE_TOL = dict(rtol=1e-6, atol=2e-6)
FORWARD_TOL = dict(rtol=1e-5, atol=1e-5)


def _expected(name):
    path = FIXTURES / f"{name}_expected.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return load_file(str(path)), metadata


def _linear(expected, path):
    weight = expected[f"{path}.weight"]
    bias = expected.get(f"{path}.bias")
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


LYCORIS_CASES = [
    # fixture, module class, adapter prefix of a module path, the constructor's options
    ("lycoris_plain_b4", ol.DiagOFT, "lycoris_", {}),
    ("lycoris_constrained_b8", ol.DiagOFT, "lycoris_", {}),
    ("lycoris_rescaled_b4", ol.DiagOFT, "lycoris_", {}),
    ("lycoris_bypass_b4", ol.DiagOFT, "lycoris_", {"bypass": True}),
    ("lycoris_bypass_rescaled_b8", ol.DiagOFT, "lycoris_", {"bypass": True}),
    ("lycoris_boft_plain_b4", ol.BOFT, "lycoris_", {}),
    ("lycoris_boft_constrained_b8", ol.BOFT, "lycoris_", {}),
    ("lycoris_boft_rescaled_b4", ol.BOFT, "lycoris_", {}),
    ("kohya_k4", ol.DiagOFT, "oft_unet_", {"constraint_rule": "kohya"}),
    ("kohya_alpha0", ol.DiagOFT, "oft_unet_", {"constraint_rule": "kohya"}),
]


@pytest.mark.parametrize("fixture,cls,head,options", LYCORIS_CASES, ids=[c[0] for c in LYCORIS_CASES])
def test_lycoris_and_kohya_files_merge_and_run_as_their_trainers(fixture, cls, head, options):
    adapter = load_file(str(FIXTURES / f"{fixture}.safetensors"))
    expected, metadata = _expected(fixture)
    multipliers = json.loads(metadata["multipliers"])
    checked = 0
    for path in json.loads(metadata["modules"]):
        prefix = head + path.replace(".", "_")
        base = _linear(expected, path)
        for i, s in enumerate(multipliers):
            layer = cls.from_adapter(base, adapter, prefix, multiplier=s, **options)
            if not options.get("bypass"):
                torch.testing.assert_close(layer.merged_weight(), expected[f"{path}.merged.{i}"],
                                           **MERGE_TOL)
                checked += 1
            forward = expected.get(f"{path}.forward.{i}")  # LyCORIS's bypass raised at s != 1
            if forward is not None:
                with torch.no_grad():
                    torch.testing.assert_close(layer(expected[f"{path}.x"]), forward, **FORWARD_TOL)
                checked += 1
        if f"{path}.grad_c" not in expected:
            continue
        c = expected[f"{path}.grad_c"]
        for i in GRADIENT_MULTIPLIERS:
            if f"{path}.grad_blocks.{i}" not in expected:
                continue
            layer = cls.from_adapter(base, adapter, prefix, multiplier=multipliers[i], **options)
            (c * layer.merged_weight()).sum().backward()
            want = expected[f"{path}.grad_blocks.{i}"]
            torch.testing.assert_close(layer.oft_blocks.grad, want, rtol=1e-4,
                                       atol=1e-5 * float(want.abs().max()))
            if layer.rescale is not None:
                torch.testing.assert_close(layer.rescale.grad, expected[f"{path}.grad_rescale.{i}"],
                                           rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("fixture", ["onetrainer_plain", "onetrainer_scaled", "onetrainer_cans"])
def test_onetrainer_files_merge_as_the_loader(fixture):
    adapter = load_file(str(FIXTURES / f"{fixture}.safetensors"))
    expected, metadata = _expected(fixture)
    strengths = [float(v) for v in metadata["strengths"].split(",")]
    names = sorted({k[:-len(".oft_R.weight")] for k in adapter if k.endswith(".oft_R.weight")})
    for name in names:
        weight = expected[f"{name}.weight"]  # float64, the reference's
        if weight.dim() == 4:
            base = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                                   padding=1, bias=False).double()
        else:
            base = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
        with torch.no_grad():
            base.weight.copy_(weight)
        for i, s in enumerate(strengths):
            layer = oto.OFT.from_adapter(base, adapter, name, strength=s)
            assert layer.cans == (fixture == "onetrainer_cans")
            assert layer.scaled == (fixture == "onetrainer_scaled")
            # The reference in double from the same float32 generators: rounding only.
            torch.testing.assert_close(layer.merged_weight(), expected[f"{name}.merged.{i}"],
                                       rtol=1e-12, atol=1e-12)
        layer = oto.OFT.from_adapter(base, adapter, name)
        with torch.no_grad():
            torch.testing.assert_close(layer(expected[f"{name}.x"]), expected[f"{name}.forward"],
                                       rtol=1e-11, atol=1e-11)


def test_files_that_do_not_fit_are_refused():
    adapter = load_file(str(FIXTURES / "lycoris_plain_b4.safetensors"))
    with pytest.raises(ValueError, match="no tensor 'lycoris_nope.oft_blocks'"):
        ol.DiagOFT.from_adapter(torch.nn.Linear(12, 16), adapter, "lycoris_nope")
    with pytest.raises(ValueError, match=r"'lycoris_fc1.oft_blocks' is \[4, 4, 4\], but "
                                         r"Linear\(24, 16\) needs"):
        ol.DiagOFT.from_adapter(torch.nn.Linear(16, 24), adapter, "lycoris_fc1")
    adapter["lycoris_fc1.lokr_w1"] = torch.zeros(2)
    with pytest.raises(ValueError, match="lycoris_fc1.lokr_w1 belong to no DiagOFT module"):
        ol.DiagOFT.from_adapter(torch.nn.Linear(12, 16), adapter, "lycoris_fc1")
    clipped = load_file(str(FIXTURES / "onetrainer_clipped.safetensors"))
    name = sorted(k for k in clipped if k.endswith(".oft_R.clipped_oft"))[0][:-len(".oft_R.clipped_oft")]
    with pytest.raises(ValueError, match="clipped_oft': the loader clips by a power iteration"):
        oto.OFT.from_adapter(torch.nn.Linear(24, 24), clipped, name)
    plain = load_file(str(FIXTURES / "onetrainer_plain.safetensors"))
    with pytest.raises(ValueError, match=r"'lora_unet_conv_in.oft_R.weight' has blocks of b = 6, "
                                         r"which does not divide the 5 input features of "
                                         r"Linear\(5, 5\)"):
        oto.OFT.from_adapter(torch.nn.Linear(5, 5), plain, "lora_unet_conv_in")
    with pytest.raises(ValueError, match=r"'lora_unet_conv_in.oft_R.weight' is \[.*\], but "
                                         r"Linear\(24, 24\) with b = 6 needs \[4, 15\]"):
        oto.OFT.from_adapter(torch.nn.Linear(24, 24), plain, "lora_unet_conv_in")
