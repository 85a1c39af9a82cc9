"""oft.merge_diffusion / convert_dialect / inspect_adapter on LyCORIS, kohya and OneTrainer files:
the library's functions from Python, checked against what the adapters' owners compute (the
*_expected.safetensors of tests/dialects/fixtures: LyCORIS's own merge, kohya's formulas, the
ComfyUI-OFTv2 loader's, written by tests/dialects/make_fixtures.py and
make_onetrainer_fixtures.py), against the `oft` tool's output for the same arguments (when
$OFT_TOOL names a tool built from the same sources), and against bad arguments.

The bases are written here from the fixtures' base weights (small diffusers folders) or are
tests/diffusion/fixtures (tests/diffusion/make_fixtures.py)."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import oft

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIALECTS = ROOT / "tests" / "dialects" / "fixtures"
DIFFUSION = ROOT / "tests" / "diffusion" / "fixtures"
PEFT = ROOT / "tests" / "peft" / "fixtures" / "adapters"
pytestmark = pytest.mark.skipif(not oft.has_io,
                                reason="oft built without nlohmann_json (no oft._io)")

# OneTrainer's kohya-style module names in onetrainer_*.safetensors -> (diffusers component, the
# base tensor): the '_' of a module name cannot be turned back into '.' without the model.
ONETRAINER_TENSORS = {
    "lora_te1_text_model_encoder_layers_0_mlp_fc1":
        ("text_encoder", "text_model.encoder.layers.0.mlp.fc1.weight"),
    "lora_unet_conv_in": ("unet", "conv_in.weight"),
    "lora_unet_down_blocks_0_attentions_0_proj_in":
        ("unet", "down_blocks.0.attentions.0.proj_in.weight"),
    "lora_unet_down_blocks_1_downsamplers_0_conv":
        ("unet", "down_blocks.1.downsamplers.0.conv.weight"),
    "lora_unet_mid_block_attentions_0_to_k": ("unet", "mid_block.attentions.0.to_k.weight"),
}


def _metadata(path):
    with safe_open(str(path), "np") as f:
        return f.metadata()


def _weights_file(component):
    # diffusers' name for its own models, transformers' for the text encoders.
    return "model.safetensors" if component.startswith("text_encoder") else \
        "diffusion_pytorch_model.safetensors"


def _folder(path, components):
    """A diffusers model folder: model_index.json and, per component, one safetensors file."""
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    for component, tensors in components.items():
        (path / component).mkdir()
        save_file(tensors, str(path / component / _weights_file(component)))
    return path


def _onetrainer_base(tmp_path):
    """text_encoder/ and unet/ holding the base weights of onetrainer_plain_expected (float64
    there; float32 here, a dtype a checkpoint has)."""
    expected = load_file(str(DIALECTS / "onetrainer_plain_expected.safetensors"))
    components = {}
    for module, (component, tensor) in ONETRAINER_TENSORS.items():
        weight = expected[module + ".weight"].astype(np.float32)
        components.setdefault(component, {})[tensor] = weight
    return _folder(tmp_path / "onetrainer_base", components), expected


def _kohya_base(tmp_path):
    """unet/ holding the base layers kohya_k4_expected.safetensors merged (float32)."""
    expected = load_file(str(DIALECTS / "kohya_k4_expected.safetensors"))
    unet = {k: v for k, v in expected.items() if k.endswith((".weight", ".bias"))}
    return _folder(tmp_path / "kohya_base", {"unet": unet}), expected


def _merged(out, component="unet"):
    return load_file(str(out / component / _weights_file(component)))


def _close(got, want, what):
    # The library merges in double and rounds once to the tensor's dtype; the references are
    # float32 (LyCORIS, kohya) or float64 (the OneTrainer loader, from the float64 weight whose
    # float32 rounding is the base here). A rotation keeps norms, so a few ulps of the largest
    # entry bound both roundings.
    scale = float(np.abs(want).max())
    tolerance = 4 * np.finfo(got.dtype).eps * scale
    assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= tolerance, what


@pytest.mark.parametrize("index", [None, 0, 1, 3, 4])
def test_kohya_merge_into_a_diffusers_folder_equals_kohyas_formulas(tmp_path, index):
    base, expected = _kohya_base(tmp_path)
    multipliers = json.loads(_metadata(DIALECTS / "kohya_k4_expected.safetensors")["multipliers"])
    blend = None if index is None else multipliers[index]
    seen = []
    report = oft.merge_diffusion(base, DIALECTS / "kohya_k4.safetensors", tmp_path / "out",
                                 blend=blend, progress=seen.append)
    merged = _merged(tmp_path / "out")
    modules = json.loads(_metadata(DIALECTS / "kohya_k4_expected.safetensors")["modules"])
    assert report["dialect"] == "kohya"
    assert sorted(t["tensor"] for t in report["targets"]) == sorted(f"unet/{m}.weight"
                                                                    for m in modules)
    for t in report["targets"]:  # whole tensors: no fused slice in a SD 1.5 U-Net
        assert t["module"].startswith("oft_unet_")
        rows = expected[t["tensor"][len("unet/"):]].shape[0]
        assert (t["row_begin"], t["row_count"]) == (0, rows)
    assert (report["tensors"], report["files"], report["other_files"]) == (len(merged), 1, 1)
    assert report["dropped"] == [] and not any(t["swap_halves"] for t in report["targets"])
    assert seen and seen[-1]["tensors_done"] == seen[-1]["tensors_total"] == len(merged)
    for m in modules:
        _close(merged[m + ".weight"], expected[f"{m}.merged.{index or 0}"], m)
        assert np.array_equal(merged[m + ".bias"], expected[m + ".bias"]), m  # not rotated
    # What the blend costs in orthogonality: not measured without a blend, rounding at s = 1
    # (R itself), more at the others.
    if blend is None:
        assert report["blend_orthogonality_error"] == 0.0
    elif blend == 1.0:
        assert report["blend_orthogonality_error"] <= 1e-12
    else:
        assert report["blend_orthogonality_error"] > 1e-4
    assert ((tmp_path / "out" / "model_index.json").read_bytes() ==
            (base / "model_index.json").read_bytes())


@pytest.mark.parametrize("index", [0, 1, 3])
def test_lycoris_merge_equals_lycoris_merge_to(tmp_path, index):
    # LyCORIS's default prefix "lycoris_" adapts any component; the fixture's layers (fc1, fc2,
    # proj.out) are put in unet/.
    expected = load_file(str(DIALECTS / "lycoris_rescaled_b4_expected.safetensors"))
    multipliers = json.loads(_metadata(DIALECTS / "lycoris_rescaled_b4_expected.safetensors")
                             ["multipliers"])
    layers = ("fc1", "fc2", "proj.out")
    base = _folder(tmp_path / "base", {"unet": {f"{m}.weight": expected[f"{m}.weight"]
                                                for m in layers}})
    report = oft.merge_diffusion(base, DIALECTS / "lycoris_rescaled_b4.safetensors",
                                 tmp_path / "out", blend=multipliers[index])
    assert report["dialect"] == "lycoris"
    merged = _merged(tmp_path / "out")
    for m in layers:
        _close(merged[f"{m}.weight"], expected[f"{m}.merged.{index}"], m)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_onetrainer_merge_equals_the_comfyui_loader(tmp_path, index):
    base, expected = _onetrainer_base(tmp_path)
    metadata = _metadata(DIALECTS / "onetrainer_plain_expected.safetensors")
    strengths = [float(s) for s in metadata["strengths"].split(",")]
    # The loader's "strength" is the linear blend W + s (W' - W): oft's blend.
    report = oft.merge_diffusion(base, DIALECTS / "onetrainer_plain.safetensors", tmp_path / "out",
                                 blend=strengths[index])
    assert report["dialect"] == "onetrainer"
    assert report["files"] == 2 and len(report["targets"]) == len(ONETRAINER_TENSORS)
    for module, (component, tensor) in ONETRAINER_TENSORS.items():
        merged = _merged(tmp_path / "out", component)[tensor]
        assert merged.dtype == np.float32
        _close(merged, expected[f"{module}.merged.{index}"], module)


def test_single_file_merge_equals_the_folder_merge_and_keeps_the_rest(tmp_path):
    # sd15_tiny.safetensors and sd15_diffusers/ hold the same U-Net values, under the LDM and the
    # diffusers names: the kohya merge must change the same tensors to the same bytes.
    adapter = DIALECTS / "kohya_k4.safetensors"
    single = oft.merge_diffusion(DIFFUSION / "sd15_tiny.safetensors", adapter,
                                 tmp_path / "single.safetensors")
    folder = oft.merge_diffusion(DIFFUSION / "sd15_diffusers", adapter, tmp_path / "folder")
    assert single["files"] == 1 and single["other_files"] == 0
    assert len(single["targets"]) == len(folder["targets"]) == 3
    base = load_file(str(DIFFUSION / "sd15_tiny.safetensors"))
    merged = load_file(str(tmp_path / "single.safetensors"))
    merged_folder = _merged(tmp_path / "folder")
    assert sorted(merged) == sorted(base)
    changed = {t["tensor"] for t in single["targets"]}
    by_module = {t["module"]: t["tensor"] for t in folder["targets"]}
    for t in single["targets"]:
        diffusers = by_module[t["module"]][len("unet/"):]
        assert merged[t["tensor"]].dtype == np.float16
        assert merged[t["tensor"]].tobytes() == merged_folder[diffusers].tobytes(), t["module"]
        assert not np.array_equal(merged[t["tensor"]], base[t["tensor"]]), t["module"]
    for name in set(base) - changed:  # the text encoder, the VAE, conv_in, biases
        assert merged[name].tobytes() == base[name].tobytes(), name
    assert (_metadata(tmp_path / "single.safetensors") ==
            _metadata(DIFFUSION / "sd15_tiny.safetensors"))


@pytest.mark.parametrize("adapter", ["kohya_k4", "onetrainer_clipped"])
def test_strength_one_is_the_adapter_and_zero_the_base(tmp_path, adapter):
    if adapter.startswith("kohya"):
        base = DIFFUSION / "sd15_tiny.safetensors"
    else:
        base, _ = _onetrainer_base(tmp_path)
    adapter = DIALECTS / f"{adapter}.safetensors"
    out = {s: tmp_path / (f"s{s}" + (".safetensors" if base.is_file() else "")) for s in
           (None, 1.0, 0.0)}
    for s, path in out.items():
        oft.merge_diffusion(base, adapter, path, strength=s)

    def tensors(path):
        if path.is_file():
            return {"": load_file(str(path))}
        return {c.name: load_file(str(next(c.glob("*.safetensors"))))
                for c in path.iterdir() if c.is_dir()}

    default, one, zero, original = (tensors(out[None]), tensors(out[1.0]), tensors(out[0.0]),
                                    tensors(base))
    for component, names in original.items():
        for name, value in names.items():
            # s = 1: the adapter itself, the same path bit for bit; R(0 Q) = I: the base.
            assert one[component][name].tobytes() == default[component][name].tobytes(), name
            assert zero[component][name].tobytes() == value.tobytes(), name
    # ... and the adapter does change the base, so neither equality holds by accident.
    assert any(default[c][n].tobytes() != v.tobytes()
               for c in original for n, v in original[c].items())


def test_variant_merges_that_variant_and_leaves_the_others_out(tmp_path):
    # diffusers' variants: diffusion_pytorch_model.fp16.safetensors beside the plain file.
    base, expected = _kohya_base(tmp_path)
    plain = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in plain.items()},
              str(base / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    adapter = DIALECTS / "kohya_k4.safetensors"
    with pytest.raises(ValueError, match="variant"):  # two variants, none chosen
        oft.merge_diffusion(base, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = oft.merge_diffusion(base, adapter, tmp_path / "out", variant="fp16")
    assert report["dropped"] == ["unet/diffusion_pytorch_model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out" / "unet").iterdir()) == [
        "diffusion_pytorch_model.fp16.safetensors"]
    merged = load_file(str(tmp_path / "out" / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    for m in json.loads(_metadata(DIALECTS / "kohya_k4_expected.safetensors")["modules"]):
        assert merged[m + ".weight"].dtype == np.float16
        # The float16 base is the float32 one rounded: within float16's rounding of the merge.
        _close(merged[m + ".weight"], expected[f"{m}.merged.0"], m)


def test_dtype_converts_every_floating_tensor(tmp_path):
    report = oft.merge_diffusion(DIFFUSION / "sd15_diffusers", DIALECTS / "kohya_k4.safetensors",
                                 tmp_path / "out", dtype="float32")
    merged = _merged(tmp_path / "out")
    assert report["tensors"] == len(merged)
    assert all(v.dtype == np.float32 for v in merged.values())


def test_merge_diffusion_refusals_name_the_argument_and_write_nothing(tmp_path):
    base = DIFFUSION / "sd15_diffusers"
    adapter = DIALECTS / "kohya_k4.safetensors"
    out = tmp_path / "out"
    # The library's own refusal, word for word (it names --strength and --blend).
    with pytest.raises(ValueError, match=r"^oft: --strength and --blend both given"):
        oft.merge_diffusion(base, adapter, out, strength=0.5, blend=0.5)
    with pytest.raises(ValueError, match="--strength nan is not finite"):
        oft.merge_diffusion(base, adapter, out, strength=float("nan"))
    with pytest.raises(TypeError, match="strength must be a number or None, got str"):
        oft.merge_diffusion(base, adapter, out, strength="0.5")
    with pytest.raises(TypeError, match="blend must be a number or None, got bool"):
        oft.merge_diffusion(base, adapter, out, blend=True)
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        oft.merge_diffusion(base, adapter, out, dtype="float8")
    with pytest.raises(ValueError, match="unknown dialect 'comfyui'"):
        oft.merge_diffusion(base, adapter, out, dialect="comfyui")
    with pytest.raises(TypeError, match="dialect must be a str or None"):
        oft.merge_diffusion(base, adapter, out, dialect=3)
    with pytest.raises(TypeError, match="base must be a path"):
        oft.merge_diffusion(None, adapter, out)
    with pytest.raises(TypeError, match="progress must be callable"):
        oft.merge_diffusion(base, adapter, out, progress=1)
    with pytest.raises(TypeError, match="variant must be a str or None"):
        oft.merge_diffusion(base, adapter, out, variant=16)
    # An adapter for another model (LyCORIS's fc1, fc2: no such tensor in a SD 1.5 U-Net).
    with pytest.raises(ValueError, match="lycoris_fc1"):
        oft.merge_diffusion(base, DIALECTS / "lycoris_plain_b4.safetensors", out)
    # A file read as a dialect it is not.
    with pytest.raises(ValueError, match="no OneTrainer OFT module"):
        oft.merge_diffusion(base, adapter, out, dialect="onetrainer")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder; a single-file base merges into a file"):
        oft.merge_diffusion(DIFFUSION / "sd15_tiny.safetensors", adapter, folder, force=True)
    assert list(folder.iterdir()) == []
    # An existing output is kept unless force.
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(ValueError, match="exists \\(pass --force to replace it\\)"):
        oft.merge_diffusion(base, adapter, out)
    assert [p.name for p in out.iterdir()] == ["keep"]
    oft.merge_diffusion(base, adapter, out, force=True)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not (out / "keep").exists()


def test_convert_kohya_to_lycoris_and_back(tmp_path):
    oft.convert_dialect(DIALECTS / "kohya_k4.safetensors", tmp_path / "l.safetensors",
                        to="lycoris")
    report = oft.convert_dialect(tmp_path / "l.safetensors", tmp_path / "k.safetensors", to="kohya")
    assert (report["from"], report["to"]) == ("lycoris", "kohya")
    assert report["max_change"] <= 1e-6 and report["round_trip"] <= 1e-6
    original = load_file(str(DIALECTS / "kohya_k4.safetensors"))
    back = load_file(str(tmp_path / "k.safetensors"))
    assert {k for k in back if k.endswith(".oft_blocks")} == \
        {k for k in original if k.endswith(".oft_blocks")}
    assert oft.inspect_adapter(tmp_path / "k.safetensors")["dialect"] == "kohya-oft"


def test_convert_kohya_to_lycoris_merges_the_same(tmp_path):
    base, expected = _kohya_base(tmp_path)
    report = oft.convert_dialect(DIALECTS / "kohya_k4.safetensors", tmp_path / "l.safetensors",
                                 to="lycoris")
    assert (report["from"], report["to"]) == ("kohya", "lycoris")
    assert report["max_change"] <= 1e-6 and report["round_trip"] <= 1e-6
    written = load_file(str(tmp_path / "l.safetensors"))
    for m in report["modules"]:
        # kohya's oft_unet_ prefix becomes LyCORIS's lora_unet_; kohya's constraint is folded in
        # and alpha written as 0 (LyCORIS: no constraint).
        assert m["name"].startswith("oft_unet_") and m["written"] == "lora_unet_" + m["name"][9:]
        assert written[m["written"] + ".alpha"] == 0
    assert oft.inspect_adapter(tmp_path / "l.safetensors")["dialect"] == "lycoris-diag-oft"
    oft.merge_diffusion(base, tmp_path / "l.safetensors", tmp_path / "merged")
    merged = _merged(tmp_path / "merged")
    for m in json.loads(_metadata(DIALECTS / "kohya_k4_expected.safetensors")["modules"]):
        _close(merged[m + ".weight"], expected[f"{m}.merged.0"], m)


def test_convert_peft_to_onetrainer_and_back(tmp_path):
    # PEFT >= 0.18 with 5 Neumann terms computes the ComfyUI loader's series: exact both ways.
    there = oft.convert_dialect(PEFT / "neumann_t5", tmp_path / "ot.safetensors", to="onetrainer")
    assert (there["from"], there["to"]) == ("peft-oft", "onetrainer")
    assert there["max_change"] <= 1e-6
    assert oft.inspect_adapter(tmp_path / "ot.safetensors")["dialect"] == "onetrainer-oft"
    back = oft.convert_dialect(tmp_path / "ot.safetensors", tmp_path / "peft", to="peft")
    assert (back["from"], back["to"]) == ("onetrainer", "peft-oft")
    assert back["max_change"] <= 1e-6
    assert (tmp_path / "peft" / "adapter_config.json").exists()
    original = load_file(str(PEFT / "neumann_t5" / "adapter_model.safetensors"))
    again = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert sorted(again) == sorted(original)


def test_convert_dialect_refusals_write_nothing(tmp_path):
    adapter = DIALECTS / "kohya_k4.safetensors"
    # Output side to input side: no file of the other side carries the rotation.
    with pytest.raises(ValueError, match="OUTPUT channels"):
        oft.convert_dialect(adapter, tmp_path / "ot.safetensors", to="onetrainer")
    with pytest.raises(ValueError, match="OUTPUT channels"):
        oft.convert_dialect(adapter, tmp_path / "peft", to="peft")
    with pytest.raises(ValueError, match="already lycoris"):
        oft.convert_dialect(DIALECTS / "lycoris_plain_b4.safetensors", tmp_path / "l.safetensors",
                            to="lycoris")
    with pytest.raises(ValueError, match="already kohya"):
        oft.convert_dialect(adapter, tmp_path / "x", to="kohya")
    with pytest.raises(ValueError,
                       match="to must be one of peft, lycoris, kohya, onetrainer, got 'comfyui'"):
        oft.convert_dialect(adapter, tmp_path / "x", to="comfyui")
    with pytest.raises(ValueError, match="kohya's OFT names only U-Net modules"):
        oft.convert_dialect(DIALECTS / "lycoris_plain_b4.safetensors", tmp_path / "k.safetensors",
                            to="kohya")
    with pytest.raises(TypeError, match="to must be a str"):
        oft.convert_dialect(adapter, tmp_path / "x", to=None)
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        oft.convert_dialect(adapter, tmp_path / "x", to="lycoris", tolerance=0)
    with pytest.raises(TypeError, match="out must be a path"):
        oft.convert_dialect(adapter, 5, to="lycoris")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "l.safetensors").write_bytes(b"mine")
    with pytest.raises(ValueError, match="exists \\(pass --force"):
        oft.convert_dialect(adapter, tmp_path / "l.safetensors", to="lycoris")
    assert (tmp_path / "l.safetensors").read_bytes() == b"mine"


@pytest.mark.parametrize("name,dialect,side", [
    ("kohya_k4", "kohya-oft", "output"),
    ("lycoris_plain_b4", "lycoris-diag-oft", "output"),
    ("lycoris_boft_plain_b4", "lycoris-boft", "output"),
    ("onetrainer_all", "onetrainer-oft", "input"),
])
def test_inspect_dialect_files(name, dialect, side):
    adapter = DIALECTS / f"{name}.safetensors"
    report = oft.inspect_adapter(adapter)
    assert report["dialect"] == dialect
    stored = load_file(str(adapter))
    for m in report["modules"]:
        assert any(k.startswith(m["name"] + ".") for k in stored), m["name"]
        summary = m["summary"]
        assert summary["side"] == side and summary["block_size"] >= 2
        assert summary["rho"] >= 0 and summary["orthogonality_error"] >= 0
    # Every module of the file is reported.
    reported = {m["name"] for m in report["modules"]}
    assert reported == {k.split(".")[0] for k in stored}


def test_inspect_dialect_override_and_peft_summary():
    # A LyCORIS file read with kohya's rule (`oft inspect --dialect kohya`).
    assert oft.inspect_adapter(DIALECTS / "lycoris_plain_b4.safetensors",
                               dialect="kohya")["dialect"] == "kohya-oft"
    # A PEFT directory: PEFT's report as before, each module with the summary too.
    report = oft.inspect_adapter(PEFT / "neumann_t5")
    assert all(m["summary"]["side"] == "input" for m in report["modules"])
    with pytest.raises(ValueError, match="no LyCORIS diag-OFT module"):
        oft.inspect_adapter(DIALECTS / "onetrainer_plain.safetensors", dialect="lycoris")
    with pytest.raises(ValueError, match="unknown dialect 'comfyui'"):
        oft.inspect_adapter(DIALECTS / "onetrainer_plain.safetensors", dialect="comfyui")


# ---- the same arguments through the `oft` tool --------------------------------------------------

def _tool():
    # Only a tool named explicitly: one guessed from a build folder may be older than the module
    # and differ for that reason alone.
    tool = os.environ.get("OFT_TOOL", "")
    if tool and not os.access(tool, os.X_OK):
        # Named but missing (a build without the tool, a wrong path): an error, not 13 skips.
        raise RuntimeError(f"OFT_TOOL={tool!r} is not an executable file")
    return tool or None


needs_tool = pytest.mark.skipif(_tool() is None,
                                reason="set OFT_TOOL to a built oft tool to compare with it")


def _run_tool(*args):
    done = subprocess.run([_tool(), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _files(path):
    path = pathlib.Path(path)
    if path.is_file():
        return {"": path}
    return {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}


def _same_output(ours, theirs):
    """Byte for byte, at every instruction-set level of the module: the merge rounds its double
    results once to the tensor's dtype (measured equal to a native tool from the x86-64-v3 and
    x86-64-v4 modules on these fixtures)."""
    ours, theirs = _files(ours), _files(theirs)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].read_bytes() == theirs[name].read_bytes(), name


def _same_report(ours, theirs, where="report"):
    """Equal, except that off a native build a float may differ in its last bits (norms and
    eigenvalues summed in another order); a quantity at double's rounding level (the
    orthogonality error of an exact rotation, about 1e-16) is that noise itself, hence the
    absolute floor."""
    if isinstance(ours, float) and isinstance(theirs, float) and \
            oft.build_info()["level"] not in ("native", "default"):
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), where
    elif isinstance(ours, dict):
        assert isinstance(theirs, dict) and list(ours) == list(theirs), where
        for key in ours:
            _same_report(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same_report(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


@needs_tool
@pytest.mark.parametrize("base,adapter,options,tool_options", [
    ("sd15_tiny.safetensors", "kohya_k4", {}, []),
    ("sd15_diffusers", "kohya_k4", {"blend": 0.5, "dtype": "bfloat16"},
     ["--blend", "0.5", "--dtype", "bf16"]),
    ("sd15_diffusers", "kohya_k4", {"strength": -0.75}, ["--strength", "-0.75"]),
    ("sd15_diffusers", "lycoris_plain_b4", {"dialect": "kohya"}, None),  # refused by both
])
def test_merge_diffusion_writes_what_the_tool_writes(tmp_path, base, adapter, options,
                                                     tool_options):
    base = DIFFUSION / base
    adapter = DIALECTS / f"{adapter}.safetensors"
    suffix = ".safetensors" if base.is_file() else ""
    if tool_options is None:
        with pytest.raises(ValueError):
            oft.merge_diffusion(base, adapter, tmp_path / "py", **options)
        done = subprocess.run([_tool(), "merge", "--base", base, "--adapter", adapter, "-o",
                               tmp_path / "tool", "-q", "--dialect", options["dialect"]],
                              capture_output=True, text=True)
        assert done.returncode == 1 and not (tmp_path / "tool").exists()
        assert not (tmp_path / "py").exists()
        return
    oft.merge_diffusion(base, adapter, tmp_path / ("py" + suffix), **options)
    _run_tool("merge", "--base", base, "--adapter", adapter, "-o", tmp_path / ("tool" + suffix),
              "-q", *tool_options)
    _same_output(tmp_path / ("py" + suffix), tmp_path / ("tool" + suffix))


@needs_tool
@pytest.mark.parametrize("adapter,to,out", [
    (DIALECTS / "kohya_k4.safetensors", "lycoris", "x.safetensors"),
    (DIALECTS / "kohya_alpha0.safetensors", "lycoris", "x.safetensors"),
    (PEFT / "neumann_t5", "onetrainer", "x.safetensors"),
])
def test_convert_dialect_writes_what_the_tool_writes(tmp_path, adapter, to, out):
    (tmp_path / "py").mkdir()
    (tmp_path / "tool").mkdir()
    oft.convert_dialect(adapter, tmp_path / "py" / out, to=to)
    _run_tool("convert", "--adapter", adapter, "-o", tmp_path / "tool" / out, "--to", to)
    _same_output(tmp_path / "py" / out, tmp_path / "tool" / out)


@needs_tool
@pytest.mark.parametrize("adapter,dialect", [
    (DIALECTS / "kohya_k4.safetensors", None),
    (DIALECTS / "lycoris_boft_rescaled_b4.safetensors", None),
    (DIALECTS / "onetrainer_all.safetensors", None),
    (DIALECTS / "lycoris_plain_b4.safetensors", "kohya"),
    (PEFT / "exact", "onetrainer"),
    (PEFT / "coft", None),
])
def test_inspect_adapter_is_the_tools_json(adapter, dialect):
    args = ["inspect", adapter, "--json"] + (["--dialect", dialect] if dialect else [])
    _same_report(oft.inspect_adapter(adapter, dialect=dialect), json.loads(_run_tool(*args)))
