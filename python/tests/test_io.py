"""oft.merge_model / inspect_adapter / convert_adapter: the library's model-file functions from
Python, checked against PEFT's own merge_and_unload (the fixtures' reference.safetensors, written
by tests/peft/make_reference.py with the real PEFT) and against bad arguments."""
import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import oft

ADAPTERS = pathlib.Path(__file__).resolve().parents[2] / "tests" / "peft" / "fixtures" / "adapters"
pytestmark = pytest.mark.skipif(not oft.has_io, reason="oft built without nlohmann_json (no oft._io)")


def _base_dir(tmp_path, name):
    """A one-file model directory holding the fixture's PEFT base weights, and PEFT's merge."""
    reference = load_file(str(ADAPTERS / name / "reference.safetensors"))
    base = {k[:-len(".base")] + ".weight": v for k, v in reference.items() if k.endswith(".base")}
    merged = {k[:-len(".merged")] + ".weight": v for k, v in reference.items()
              if k.endswith(".merged")}
    directory = tmp_path / f"base_{name}"
    directory.mkdir()
    save_file(base, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "toy"}))
    return directory, base, merged


@pytest.mark.parametrize("name", ["exact", "neumann_t5", "coft", "block_share"])
def test_merge_model_equals_peft_merge_and_unmerge_restores(tmp_path, name):
    base_dir, base, merged_by_peft = _base_dir(tmp_path, name)
    seen = []
    report = oft.merge_model(base_dir, ADAPTERS / name, tmp_path / "merged", progress=seen.append)
    assert sorted(report["adapted"]) == sorted(merged_by_peft)
    assert report["tensors"] == len(base) and report["shards"] == 1 and report["other_files"] == 1
    assert seen and seen[-1]["tensors_done"] == seen[-1]["tensors_total"] == len(base)
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    for tensor, want in merged_by_peft.items():
        scale = np.abs(want).max()
        assert np.abs(merged[tensor] - want).max() <= 1e-5 * scale, tensor
    assert (tmp_path / "merged" / "config.json").read_bytes() == (base_dir / "config.json").read_bytes()

    oft.merge_model(tmp_path / "merged", ADAPTERS / name, tmp_path / "restored", unmerge=True)
    restored = load_file(str(tmp_path / "restored" / "model.safetensors"))
    for tensor, want in base.items():
        assert np.abs(restored[tensor] - want).max() <= 1e-5 * np.abs(want).max(), tensor


def test_merge_model_dtype_and_strength(tmp_path):
    base_dir, base, _ = _base_dir(tmp_path, "neumann_t5")
    oft.merge_model(base_dir, ADAPTERS / "neumann_t5", tmp_path / "zero", strength=0.0)
    zero = load_file(str(tmp_path / "zero" / "model.safetensors"))
    for tensor, want in base.items():  # R(0 Q) = I: bit for bit
        assert np.array_equal(zero[tensor], want), tensor
    oft.merge_model(base_dir, ADAPTERS / "neumann_t5", tmp_path / "half", dtype="float16")
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert all(v.dtype == np.float16 for v in half.values())


def test_merge_model_refuses_before_writing(tmp_path):
    base_dir, _, _ = _base_dir(tmp_path, "exact")
    out = tmp_path / "merged"
    out.mkdir()
    with pytest.raises((ValueError, RuntimeError), match="--force"):
        oft.merge_model(base_dir, ADAPTERS / "exact", out)
    assert list(out.iterdir()) == []
    oft.merge_model(base_dir, ADAPTERS / "exact", out, force=True)
    assert (out / "model.safetensors").exists()
    with pytest.raises(ValueError, match="dtype"):
        oft.merge_model(base_dir, ADAPTERS / "exact", tmp_path / "x", dtype="float8")
    with pytest.raises(TypeError, match="base"):
        oft.merge_model(3, ADAPTERS / "exact", tmp_path / "x")
    with pytest.raises(TypeError, match="progress"):
        oft.merge_model(base_dir, ADAPTERS / "exact", tmp_path / "x", progress=5)
    with pytest.raises((ValueError, RuntimeError)):
        oft.merge_model(tmp_path / "no_such_model", ADAPTERS / "exact", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_inspect_adapter_reports_peft_settings():
    config = json.loads((ADAPTERS / "neumann_t5" / "adapter_config.json").read_text())
    report = oft.inspect_adapter(ADAPTERS / "neumann_t5", tolerance=1e-4)
    assert report["num_cayley_neumann_terms"] == config["num_cayley_neumann_terms"]
    assert report["tolerance"] == 1e-4
    assert sorted(m["name"] for m in report["modules"]) == sorted(config["target_modules"])
    stored = load_file(str(ADAPTERS / "neumann_t5" / "adapter_model.safetensors"))
    for m in report["modules"]:
        # Each module's generators and b as PEFT stored them (PEFT picks b per layer: "odd" has 10).
        theta = stored[f"base_model.model.{m['name']}.oft_R.weight"]
        b = m["block_size"]
        assert theta.shape == (m["generators"], b * (b - 1) // 2), m["name"]
        assert 0 <= m["rho"]["median"] <= m["rho"]["worst"]
    with pytest.raises((ValueError, RuntimeError)):
        oft.inspect_adapter(ADAPTERS / "no_such_adapter")


def test_convert_adapter_generators_dtype(tmp_path):
    report = oft.convert_adapter(ADAPTERS / "exact", tmp_path / "bf16", generators_dtype="bfloat16",
                                 allow_change=True)
    assert report["max_change"] >= 0 and report["modules"]
    assert (tmp_path / "bf16" / "adapter_config.json").exists()
    with pytest.raises(ValueError, match="generators_dtype"):
        oft.convert_adapter(ADAPTERS / "exact", tmp_path / "y", generators_dtype="int8")
