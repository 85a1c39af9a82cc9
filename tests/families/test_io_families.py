"""oft.merge_model and oft.inspect_adapter on PEFT BOFT and HRA adapters, from Python: the merge
equals PEFT 0.21.2's own merge_and_unload of the same saved folder (fixtures/adapters/, weights
in families_reference.safetensors), unmerge restores the base, and inspect reports the family."""
import json
import pathlib

import pytest

oft = pytest.importorskip("oft")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

if not oft.has_io:
    pytest.skip("this build of oft has no model-file support (no oft._io)", allow_module_level=True)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
FAMILIES = ("boft", "hra")


def _base_dir(tmp_path, family):
    """The float32 TinyModel PEFT adapted (lin1, lin2 with biases) as a one-file model directory,
    and PEFT's merged weights."""
    reference = safetensors_torch.load_file(str(FIXTURES / "families_reference.safetensors"))
    prefix = f"adapter_{family}."
    base = {k[len(prefix):]: v for k, v in reference.items()
            if k.startswith(prefix) and k.endswith((".weight", ".bias"))}
    merged = {k[len(prefix):-len(".merged_weight")] + ".weight": v for k, v in reference.items()
              if k.startswith(prefix) and k.endswith(".merged_weight")}
    directory = tmp_path / f"base_{family}"
    directory.mkdir()
    safetensors_torch.save_file(base, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "toy"}))
    return directory, base, merged


def _relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_equals_peft_merge_and_unload_and_unmerge_restores(tmp_path, family):
    base_dir, base, merged_by_peft = _base_dir(tmp_path, family)
    adapter = FIXTURES / "adapters" / family
    report = oft.merge_model(base_dir, adapter, tmp_path / "merged")
    assert sorted(report["adapted"]) == ["lin1.weight", "lin2.weight"]
    merged = safetensors_torch.load_file(str(tmp_path / "merged" / "model.safetensors"))
    for name, want in merged_by_peft.items():
        assert merged[name].dtype == torch.float32
        # oft merges in double and rounds once; PEFT multiplies in float32.
        assert _relative(merged[name], want) < 1e-6, name
    for name in ("lin1.bias", "lin2.bias"):
        assert torch.equal(merged[name], base[name])  # neither family touches the bias

    oft.merge_model(tmp_path / "merged", adapter, tmp_path / "restored", unmerge=True)
    restored = safetensors_torch.load_file(str(tmp_path / "restored" / "model.safetensors"))
    for name, want in base.items():
        assert _relative(restored[name], want) < 1e-6, name


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_refuses_strength_before_writing(tmp_path, family):
    base_dir, _, _ = _base_dir(tmp_path, family)
    with pytest.raises(ValueError, match="strength"):
        oft.merge_model(base_dir, FIXTURES / "adapters" / family, tmp_path / "out", strength=0.5)
    assert not (tmp_path / "out").exists()


def test_inspect_reports_each_family():
    boft = oft.inspect_adapter(FIXTURES / "adapters" / "boft")
    assert boft["family"] == "BOFT"
    lin1, lin2 = boft["modules"]
    assert (lin1["name"], lin1["factors"], lin1["blocks"], lin1["block_size"]) == ("lin1", 2, 4, 4)
    assert (lin2["features"], lin2["out_features"]) == (16, 8)
    assert lin1["orthogonality_error"]["worst"] < 1e-12

    hra = oft.inspect_adapter(FIXTURES / "adapters" / "hra")
    assert hra["family"] == "HRA"
    assert all(m["reflections"] == 4 and m["apply_GS"] for m in hra["modules"])
    assert all(m["orthogonality_error"]["worst"] < 1e-12 for m in hra["modules"])
