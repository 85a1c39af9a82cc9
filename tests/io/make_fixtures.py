#!/usr/bin/env python3
"""Writes the safetensors fixtures of tests/io/fixtures with the reference implementation.

The files are committed; this script says how they were made. It needs the `safetensors`,
`numpy` and `ml_dtypes` packages, e.g.:

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install safetensors numpy ml_dtypes
    /tmp/stvenv/bin/python tests/io/make_fixtures.py

Made with safetensors 0.8.0, numpy 2.4.6, ml_dtypes 0.6.0 (the values below are what the C++
tests expect; the bytes depend only on them and on the reference writer's layout rules).
"""

import json
import os

import ml_dtypes
import numpy as np
import safetensors
from safetensors.numpy import save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def all_dtypes_tensors():
    """One tensor per dtype numpy can hold, an empty tensor and a scalar (export_for_reference.cpp
    writes the same values with oft; check_with_reference.py compares)."""
    return {
        "f64": np.array([[0.5, -1.25, 3.0], [1e300, -0.0, 2.0**-1074]], dtype=np.float64),
        "f32": np.array([[1.5, -2.0], [3.25, 1e-45], [3.4028234663852886e38, -7.0]], dtype=np.float32),
        # 1, -2.5, the largest half, the smallest subnormal half, -inf, 1/3 rounded to half.
        "f16": np.array([1.0, -2.5, 65504.0, 2.0**-24, -np.inf, 1.0 / 3.0], dtype=np.float16),
        "bf16": np.array([1.0, -2.5, 3.0e38, 1.0 / 3.0], dtype=ml_dtypes.bfloat16),
        "i64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "u64": np.array([2**64 - 1, 7], dtype=np.uint64),
        "i32": np.array([[-2147483648, 2147483647], [0, -5]], dtype=np.int32),
        "u32": np.array([4294967295, 1], dtype=np.uint32),
        "i16": np.array([-32768, 32767, -3], dtype=np.int16),
        "u16": np.array([65535, 2], dtype=np.uint16),
        "i8": np.array([-128, 127, -1], dtype=np.int8),
        "u8": np.array([0, 255, 17, 42], dtype=np.uint8),
        "bool": np.array([True, False, True], dtype=np.bool_),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(3.25, dtype=np.float64),
    }


def all_dtypes():
    """all_dtypes_tensors() with one metadata key (the reference orders metadata keys by hash, so
    one key keeps the file reproducible)."""
    save_file(all_dtypes_tensors(), os.path.join(HERE, "reference_all_dtypes.safetensors"), metadata={"format": "pt"})


def conversions():
    """float32 values and numpy's float16 / ml_dtypes' bfloat16 roundings of them, to check
    oft's conversions against independent implementations."""
    rng = np.random.default_rng(20240508)
    special = np.array(
        [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 65536.0, 1e9, -1e9, np.inf, -np.inf,
         2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2.0**-11),
         1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4028234663852886e38,
         1e-40, -1e-45],
        dtype=np.float32)
    # Random significands across the half range (subnormals to overflow) and the bfloat16 range.
    half_range = (rng.uniform(1, 2, 400) * 2.0 ** rng.integers(-26, 17, 400)
                  * rng.choice([-1, 1], 400)).astype(np.float32)
    full_range = (rng.uniform(1, 2, 300) * 2.0 ** rng.integers(-130, 128, 300)
                  * rng.choice([-1, 1], 300)).astype(np.float32)
    # Exact ties between adjacent halves and adjacent bfloat16s (ties to even must be kept).
    h = rng.integers(0, 0x7bff, 200).astype(np.uint16)
    half_ties = ((h.view(np.float16).astype(np.float64) + (h + 1).view(np.float16).astype(np.float64)) / 2).astype(np.float32)
    b = rng.integers(0, 0x7f7f, 200).astype(np.uint32)
    bf16_ties = ((b << 16) | 0x8000).view(np.float32)
    src = np.concatenate([special, half_range, full_range, half_ties, bf16_ties]).astype(np.float32)
    with np.errstate(over="ignore"):
        f16 = src.astype(np.float16)
    bf16 = src.astype(ml_dtypes.bfloat16)
    tensors = {
        "src": src,
        "src_f16": f16,
        "src_bf16": bf16,
        "src_f16_widened": f16.astype(np.float32),
        "src_bf16_widened": bf16.astype(np.float32),
    }
    save_file(tensors, os.path.join(HERE, "reference_conversions.safetensors"))


def sharded():
    """A 2-shard model with a transformers-style index."""
    directory = os.path.join(HERE, "sharded")
    os.makedirs(directory, exist_ok=True)
    shard1 = {
        "model.embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "model.layers.0.weight": np.full((2, 2), -1.5, dtype=np.float32),
    }
    shard2 = {
        "model.layers.1.weight": np.array([[1, 2], [3, 4]], dtype=np.float16),
        "lm_head.bias": np.array([7, 8, 9], dtype=np.int32),
    }
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, tensors in zip(names, [shard1, shard2]):
        save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
    weight_map = {k: names[0] for k in shard1}
    weight_map.update({k: names[1] for k in shard2})
    total = sum(v.nbytes for v in list(shard1.values()) + list(shard2.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    print("safetensors", safetensors.__version__, "numpy", np.__version__, "ml_dtypes", ml_dtypes.__version__)
    os.makedirs(HERE, exist_ok=True)
    all_dtypes()
    conversions()
    sharded()
