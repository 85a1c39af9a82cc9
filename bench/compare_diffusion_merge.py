#!/usr/bin/env python3
"""`oft merge` of a LyCORIS diag-OFT file into an SDXL-sized single-file checkpoint, against
LyCORIS's own merge (lycoris-lora, `create_lycoris_from_weights` + `LycorisNetwork.merge_to`) on
the CPU: wall time and peak resident memory, one run each, the two sides interleaved.

The base is synthetic and written on the fly (not committed): SDXL's U-Net with its original
(LDM/SGM) tensor names and shapes under `model.diffusion_model.` (model_channels 320, channel_mult
1, 2, 4, transformer depth 0, 2, 10, context 2048, adm 2816: 2.57 G parameters, 5.1 GB in fp16),
values a repeated seeded random pattern. --channels scales every width down (160: a quarter of
the parameters) when the full size does not fit the time or the disk.

The adapter: LyCORIS diag-OFT (`lycoris_<module path>.oft_blocks` [k, b, b], `alpha` 0: no
constraint) on every Linear of every transformer block (attn1 and attn2 q, k, v, out; ff.net.0.proj
and ff.net.2) and on proj_in / proj_out, b = --block-size, blocks ~ N(0, 1e-3).

Sides (each its own process, peak RSS from wait4's ru_maxrss):
  oft      `oft merge --base base.safetensors --adapter a.safetensors --out o.safetensors -q`
           (streams tensor by tensor; reads, merges, writes and fsyncs)
  lycoris  a Python child in the venv given by --python (lycoris-lora 4.1.3 pinned; by default a
           venv this script creates in /tmp/oft-lycoris-venv with
           `pip install lycoris-lora==4.1.3 safetensors`): safetensors.torch.load_file of the
           base, an nn.Module tree of Linear/Conv2d over those tensors, create_lycoris_from_weights,
           merge_to(1.0), safetensors.torch.save_file of the merged state dict. Its imports are
           timed separately (import_s) and included in its wall time, as a user pays them.

Then the two outputs are compared on every adapted tensor (max |oft - LyCORIS| in fp16 units).

  python3 bench/compare_diffusion_merge.py --oft /work/build/tools/oft \\
      --out bench/results/xeon/diffusion_merge.json [--channels 160] [--python venv/bin/python]
"""
import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

LYCORIS_PIN = "lycoris-lora==4.1.3"

LYCORIS_CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import torch
from safetensors.torch import load_file, save_file
from lycoris import create_lycoris_from_weights
from importlib.metadata import version
t1 = time.perf_counter()
base, adapter, out = sys.argv[1:4]
prefix = "model.diffusion_model."
sd = load_file(base)
t2 = time.perf_counter()
root = torch.nn.Module()
groups = {}
for key, t in sd.items():
    path, param = key[len(prefix):].rsplit(".", 1)
    groups.setdefault(path, {})[param] = t
def child(parent, name):
    if name not in parent._modules:
        parent.add_module(name, torch.nn.Module())
    return parent._modules[name]
for path, params in groups.items():
    *parents, leaf = path.split(".")
    node = root
    for p in parents:
        node = child(node, p)
    w = params.get("weight")
    if leaf not in node._modules and w is not None and w.dim() == 2:
        m = torch.nn.Linear(w.shape[1], w.shape[0], bias="bias" in params, device="meta")
    elif leaf not in node._modules and w is not None and w.dim() == 4:
        m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias="bias" in params,
                            device="meta")
    else:
        m = child(node, leaf)
    for name, t in params.items():
        setattr(m, name, torch.nn.Parameter(t, requires_grad=False))
    if leaf not in node._modules:
        node.add_module(leaf, m)
network, _ = create_lycoris_from_weights(1.0, adapter, root)
with torch.no_grad():
    network.merge_to(1.0)
t3 = time.perf_counter()
merged = {prefix + k: v.contiguous() for k, v in root.state_dict().items()}
save_file(merged, out)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "merge_s": t3 - t2, "save_s": t4 - t3,
                  "modules": len(network.loras), "torch": torch.__version__,
                  "lycoris_lora": version("lycoris-lora")}))
"""


def sdxl_unet(ch=320, context=2048, adm=2816):
    """(name, shape) of SDXL's U-Net in its original layout, in the order sgm builds it."""
    out = []
    temb = 4 * ch

    def lin(name, o, i, bias=True):
        out.append((name + ".weight", (o, i)))
        if bias:
            out.append((name + ".bias", (o,)))

    def conv(name, o, i, k=3):
        out.append((name + ".weight", (o, i, k, k)))
        out.append((name + ".bias", (o,)))

    def norm(name, c):
        out.append((name + ".weight", (c,)))
        out.append((name + ".bias", (c,)))

    def res(name, i, o):
        norm(name + ".in_layers.0", i)
        conv(name + ".in_layers.2", o, i)
        lin(name + ".emb_layers.1", o, temb)
        norm(name + ".out_layers.0", o)
        conv(name + ".out_layers.3", o, o)
        if i != o:
            conv(name + ".skip_connection", o, i, 1)

    def transformer(name, c, depth):
        norm(name + ".norm", c)
        lin(name + ".proj_in", c, c)
        for d in range(depth):
            t = f"{name}.transformer_blocks.{d}"
            for a, kv in (("attn1", c), ("attn2", context)):
                lin(f"{t}.{a}.to_q", c, c, bias=False)
                lin(f"{t}.{a}.to_k", c, kv, bias=False)
                lin(f"{t}.{a}.to_v", c, kv, bias=False)
                lin(f"{t}.{a}.to_out.0", c, c)
            lin(f"{t}.ff.net.0.proj", 8 * c, c)
            lin(f"{t}.ff.net.2", c, 4 * c)
            for n in ("norm1", "norm2", "norm3"):
                norm(f"{t}.{n}", c)
        lin(name + ".proj_out", c, c)

    lin("time_embed.0", temb, ch)
    lin("time_embed.2", temb, temb)
    lin("label_emb.0.0", temb, adm)
    lin("label_emb.0.2", temb, temb)
    conv("input_blocks.0.0", ch, 4)
    mult, depth = (1, 2, 4), (0, 2, 10)
    skips, c, block = [ch], ch, 1
    for level, m in enumerate(mult):
        for _ in range(2):
            res(f"input_blocks.{block}.0", c, m * ch)
            c = m * ch
            if depth[level]:
                transformer(f"input_blocks.{block}.1", c, depth[level])
            skips.append(c)
            block += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{block}.0.op", c, c)
            skips.append(c)
            block += 1
    res("middle_block.0", c, c)
    transformer("middle_block.1", c, depth[-1])
    res("middle_block.2", c, c)
    block = 0
    for level, m in reversed(list(enumerate(mult))):
        for i in range(3):
            res(f"output_blocks.{block}.0", c + skips.pop(), m * ch)
            c = m * ch
            layer = 1
            if depth[level]:
                transformer(f"output_blocks.{block}.1", c, depth[level])
                layer = 2
            if level and i == 2:
                conv(f"output_blocks.{block}.{layer}.conv", c, c)
            block += 1
    norm("out.0", c)
    conv("out.2", 4, c)
    return [("model.diffusion_model." + n, s) for n, s in out]


def write_base(path, tensors):
    """An fp16 safetensors file, streamed: a 1 MiB seeded random pattern repeated."""
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    pattern = (np.random.default_rng(30).standard_normal(1 << 19) * 0.02).astype(np.float16)
    raw = pattern.tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        left = offset
        while left:
            chunk = raw[: min(left, len(raw))]
            f.write(chunk)
            left -= len(chunk)
    return offset


def adapted(tensors, b):
    """Module paths (without model.diffusion_model.) of the Linear layers the adapter targets."""
    keys = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
    for name, shape in tensors:
        path = name[len("model.diffusion_model."):]
        if path.endswith(".weight") and len(shape) == 2 and any(
                path.endswith("." + k + ".weight") for k in keys) and shape[0] % b == 0 \
                and b * b <= shape[0]:  # LyCORIS's factorization keeps b <= k
            yield path[: -len(".weight")], shape


def write_adapter(path, tensors, b):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(31)
    sd = {}
    for module, shape in adapted(tensors, b):
        name = "lycoris_" + module.replace(".", "_")
        sd[name + ".oft_blocks"] = (rng.standard_normal((shape[0] // b, b, b)) * 1e-3).astype(
            np.float32)
        sd[name + ".alpha"] = np.array(0.0, dtype=np.float32)
    save_file(sd, path)
    return len(sd) // 2


def run(cmd):
    """Runs cmd; returns (wall seconds, peak RSS bytes of that child, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{out}\n{err}")
    return wall, usage.ru_maxrss * 1024, out


def lycoris_python(requested, scratch):
    if requested:
        return requested
    venv = os.path.join(scratch, "..", "oft-lycoris-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([python, "-m", "pip", "install", "-q", LYCORIS_PIN, "safetensors"])
    return python


def compare(a, b, names):
    from safetensors import safe_open
    worst = 0.0
    with safe_open(a, "np") as fa, safe_open(b, "np") as fb:
        for n in names:
            x = fa.get_tensor(n).astype(np.float32)
            y = fb.get_tensor(n).astype(np.float32)
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oft", required=True, help="the oft tool")
    ap.add_argument("--python", help="a Python with lycoris-lora 4.1.3, torch, safetensors")
    ap.add_argument("--channels", type=int, default=320, help="SDXL's 320; smaller scales down")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--scratch", default="/tmp/oft_diffusion_bench")
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    scale = args.channels / 320
    tensors = sdxl_unet(args.channels, int(2048 * scale), int(2816 * scale))
    base = os.path.join(args.scratch, "sdxl_unet.safetensors")
    adapter = os.path.join(args.scratch, "lycoris_diag_oft.safetensors")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    data_bytes = write_base(base, tensors)
    modules = write_adapter(adapter, tensors, args.block_size)
    params = sum(int(np.prod(s)) for _, s in tensors)
    print(f"base: {len(tensors)} tensors, {params / 1e9:.3f} G "
          f"parameters, {data_bytes / 1e9:.2f} GB fp16 "
          f"(written in {time.perf_counter() - t0:.0f} s); "
          f"adapter: {modules} modules, b = {args.block_size}", flush=True)
    python = lycoris_python(args.python, args.scratch)
    child = os.path.join(args.scratch, "lycoris_merge.py")
    with open(child, "w") as f:
        f.write(LYCORIS_CHILD)

    results = {}
    oft_out = os.path.join(args.scratch, "oft_merged.safetensors")
    ly_out = os.path.join(args.scratch, "lycoris_merged.safetensors")
    for side in ("oft", "lycoris"):  # one run each, interleaved: oft then LyCORIS
        load = os.getloadavg()[0]
        subprocess.run(["sync"], check=True)
        if side == "oft":
            wall, rss, out = run([args.oft, "merge", "--base", base, "--adapter", adapter, "--out",
                                  oft_out, "-q", "--force"])
            results["oft"] = {"wall_s": wall, "peak_rss_bytes": rss, "load_before": load,
                              "summary": out.strip()}
        else:
            wall, rss, out = run([python, child, base, adapter, ly_out])
            detail = json.loads(out.strip().splitlines()[-1])
            results["lycoris"] = {"wall_s": wall, "peak_rss_bytes": rss, "load_before": load,
                                  **detail}
        print(f"{side}: {results[side]['wall_s']:.1f} s, peak RSS "
              f"{results[side]['peak_rss_bytes'] / 2**30:.2f} GiB (load {load:.2f})", flush=True)
    names = ["model.diffusion_model." + m + ".weight" for m, _ in adapted(tensors, args.block_size)]
    worst = compare(oft_out, ly_out, names)
    print(f"max |oft - LyCORIS| over the {len(names)} adapted tensors: {worst:.3g}")
    record = {
        "what": "oft merge vs LyCORIS create_lycoris_from_weights + merge_to + save_file, "
                "diag-OFT into a synthetic SDXL U-Net single file (fp16), one run each, "
                "interleaved",
        "cpu": platform.processor() or "Intel Xeon (2 vCPU, AVX-512)",
        "cpus": os.cpu_count(),
        "channels": args.channels,
        "parameters": sum(int(np.prod(s)) for _, s in tensors),
        "tensors": len(tensors),
        "base_bytes": data_bytes,
        "adapter_modules": modules,
        "block_size": args.block_size,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "max_abs_difference": worst,
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    for path in (oft_out, ly_out, base):
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
