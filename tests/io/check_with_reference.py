#!/usr/bin/env python3
"""Reads files written by oft::io with the reference implementation (the `safetensors` package).

Not part of ctest (CI has no Python packages); run by hand after building the io tests:

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install safetensors numpy ml_dtypes
    /tmp/stvenv/bin/python tests/io/check_with_reference.py <build>/tests/io/io_export_for_reference

Checks, against safetensors (version printed):
  1. oft_all_dtypes.safetensors loads with safe_open(framework="numpy") to the arrays of
     make_fixtures.all_dtypes_tensors(), with metadata {"format": "pt"}, and is byte-identical
     to safetensors.numpy.save() of those arrays;
  2. oft_random.safetensors (every dtype, the FP8/FP6/FP4 ones included, empty and scalar
     tensors, three metadata keys) deserializes to exactly the bytes, dtypes and shapes oft
     wrote, and every tensor numpy can hold loads with safe_open;
  3. each forged file (tests/io/forged_files.hpp) is refused by the reference exactly when the
     table says `reference_refuses` (oft refuses them all).
Exits non-zero on any disagreement.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import safetensors
from safetensors import deserialize, safe_open
from safetensors.numpy import save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402

NUMPY_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"}


def main():
    exporter = sys.argv[1]
    failures = []
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([exporter, out], check=True)

        # 1. Known values, and byte identity with the reference writer.
        path = os.path.join(out, "oft_all_dtypes.safetensors")
        expected = make_fixtures.all_dtypes_tensors()
        with safe_open(path, framework="numpy") as f:
            if f.metadata() != {"format": "pt"}:
                failures.append(f"all_dtypes: metadata {f.metadata()}")
            if sorted(f.keys()) != sorted(expected):
                failures.append(f"all_dtypes: keys {sorted(f.keys())}")
            for name, want in expected.items():
                got = f.get_tensor(name)
                if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                    failures.append(f"all_dtypes: tensor {name}: {got!r} != {want!r}")
        if open(path, "rb").read() != save(expected, metadata={"format": "pt"}):
            failures.append("all_dtypes: not byte-identical to safetensors.numpy.save")
        print(f"oft_all_dtypes: {len(expected)} tensors checked")

        # 2. Every dtype, read back as raw bytes.
        path = os.path.join(out, "oft_random.safetensors")
        listing = json.load(open(os.path.join(out, "oft_random.json")))
        data = open(path, "rb").read()
        seen = {name: info for name, info in deserialize(data)}
        if sorted(seen) != sorted(listing):
            failures.append(f"random: names differ: {sorted(set(seen) ^ set(listing))}")
        for name, want in listing.items():
            got = seen.get(name)
            if got is None:
                continue
            if got["dtype"] != want["dtype"] or list(got["shape"]) != want["shape"] or bytes(got["data"]).hex() != want["hex"]:
                failures.append(f"random: tensor {name}: {got['dtype']} {got['shape']} differs")
        with safe_open(path, framework="numpy") as f:
            if f.metadata() != {"format": "pt", "note": "\u00e9t\u00e9 \"quoted\"\n", "a": "1"}:
                failures.append(f"random: metadata {f.metadata()}")
            loaded = 0
            for name, want in listing.items():
                if want["dtype"] in NUMPY_DTYPES:
                    got = f.get_tensor(name)
                    if got.tobytes().hex() != want["hex"] or list(got.shape) != want["shape"]:
                        failures.append(f"random: safe_open {name} differs")
                    loaded += 1
        print(f"oft_random: {len(listing)} tensors deserialized, {loaded} loaded with numpy")

        # 3. Forged files: which does the reference refuse?
        table = json.load(open(os.path.join(out, "forged.json")))
        for name, row in sorted(table.items()):
            file = os.path.join(out, "forged", name + ".safetensors")
            try:
                with safe_open(file, framework="numpy") as f:
                    for key in f.keys():
                        f.get_slice(key)
                refused, why = False, "accepted"
            except Exception as error:  # noqa: BLE001 - any refusal counts
                refused, why = True, f"{type(error).__name__}: {error}".replace("\n", "\\n")
            if not row["oft_message"]:
                failures.append(f"forged {name}: oft accepted it")
            mark = "ok " if refused == row["reference_refuses"] else "MISMATCH"
            if refused != row["reference_refuses"]:
                failures.append(f"forged {name}: reference {'refuses' if refused else 'accepts'}, table says otherwise")
            print(f"  {mark} {name:26s} reference: {why[:90]}")

    print(f"safetensors {safetensors.__version__}, numpy {np.__version__}")
    for failure in failures:
        print("FAIL:", failure)
    print("all checks passed" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
