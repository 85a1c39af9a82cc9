#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz_lycoris_adapter (stdlib only): tiny files that reach the
reader's refusals a byte mutation of the trainer-made fixtures (tests/dialects/fixtures, also
seeds) rarely builds, as they need a new tensor whose data fits: a file mixing LyCORIS and kohya
modules, LyCORIS BOFT's 4-D oft_blocks (one that reads, one whose block count does not factor,
one beside a diag-OFT module and a rescale), kohya FLUX splits with a rescale or beside a plain
`.oft_blocks`, and the F64 / F16 / BF16 dtypes. Run from anywhere; writes next to itself."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FORMATS = {"F64": "<d", "F32": "<f", "F16": "<e"}


def encode(dtype, values):
    if dtype == "BF16":  # the upper half of the float32
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return b"".join(struct.pack(FORMATS[dtype], v) for v in values)


def write(name, tensors, metadata=None):
    header, data = {}, b""
    for key, dtype, shape, values in tensors:
        raw = encode(dtype, values)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(HERE, name + ".safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def blocks(k, b):
    return [0.01 * (i + 1) for i in range(k * b * b)]


write("mixed_dialects", [
    ("lycoris_fc.oft_blocks", "F32", [1, 2, 2], blocks(1, 2)), ("lycoris_fc.alpha", "F32", [], [0.5]),
    ("oft_unet_proj.oft_blocks", "F32", [1, 2, 2], blocks(1, 2)), ("oft_unet_proj.alpha", "F32", [], [0.5])])
write("f64_rescaled", [
    ("lycoris_fc.oft_blocks", "F64", [2, 2, 2], blocks(2, 2)), ("lycoris_fc.alpha", "F64", [1], [0.0]),
    ("lycoris_fc.rescale", "F64", [4, 1, 1, 1], [1.0, 0.5, 2.0, 1.5])], {"ss_network_module": "lycoris.kohya"})
write("half_dtypes", [
    ("lycoris_fc.oft_blocks", "F16", [2, 3, 3], blocks(2, 3)), ("lycoris_fc.alpha", "BF16", [], [1.0]),
    ("lycoris_fc.rescale", "BF16", [6, 1], [1.0] * 6)])
write("boft_4d", [
    ("lycoris_fc.oft_blocks", "F32", [1, 2, 2, 2], blocks(2, 2)), ("lycoris_fc.alpha", "F32", [], [0.5])])
write("boft_no_factor", [
    ("lycoris_fc.oft_blocks", "F32", [3, 6, 2, 2], blocks(18, 2)), ("lycoris_fc.alpha", "F32", [], [0.5])])
write("boft_and_diag", [
    ("lycoris_up.oft_blocks", "F32", [2, 2, 2, 2], blocks(4, 2)), ("lycoris_up.alpha", "F32", [], [0.01]),
    ("lycoris_up.rescale", "F16", [4, 1, 1, 1], [1.0, 0.5, 2.0, 1.5]),
    ("lycoris_fc.oft_blocks", "F32", [2, 2, 2], blocks(2, 2)), ("lycoris_fc.alpha", "F32", [], [0.0])])
write("flux_rescale", [
    ("oft_unet_qkv.oft_blocks.0", "F32", [1, 2, 2], blocks(1, 2)),
    ("oft_unet_qkv.oft_blocks.1", "F32", [2, 2, 2], blocks(2, 2)),
    ("oft_unet_qkv.alpha", "F32", [], [1.0]), ("oft_unet_qkv.rescale", "F32", [6, 1], [1.0] * 6)])
write("flux_and_plain", [
    ("qkv.oft_blocks.0", "F32", [1, 2, 2], blocks(1, 2)), ("qkv.oft_blocks", "F32", [1, 2, 2], blocks(1, 2)),
    ("qkv.alpha", "F32", [], [1.0])])
