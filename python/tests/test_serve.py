"""oft.serve against the real PEFT (run against peft 0.21.2, transformers 5.24.0, torch 2.15.0):
one batched forward over requests with mixed adapters equals, request by request, PEFT running
that request alone with that adapter active (or disabled, for the base model); the bank against
a block-diagonal product; bad input refused by name."""
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from peft import LoraConfig, OFTConfig, PeftModel, get_peft_model  # noqa: E402

import oft.serve  # noqa: E402

# A BERT small enough for the test suite, seeded (no download); the encoder targets below cover
# every Linear kind of BERT, the pooler included (its input is [batch, d]: per-request ids).
# initializer_range 0.2 rather than BERT's 0.02: with 0.02 the attention and FFN add ~1e-5 of the
# residual stream, and no adapter would change the output by more than a rounding or two.
CONFIG = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=64, initializer_range=0.2)

# Different block sizes (r or oft_block_size), PEFT's Neumann branch (default and T = 7) and its
# exact branch, block_share, COFT, and targets that overlap and differ (PEFT matches names by
# suffix): query, value, the attention output, intermediate and output "dense" layers have 2
# adapters each, key and the pooler 1.
ADAPTERS = {
    "neumann_b16": OFTConfig(r=0, oft_block_size=16, target_modules=["query", "value"]),
    "exact_b8_shared": OFTConfig(r=0, oft_block_size=8, block_share=True, use_cayley_neumann=False,
                                 target_modules=["key", "dense"]),
    "exact_r4": OFTConfig(r=4, oft_block_size=0, use_cayley_neumann=False,
                          target_modules=["query", "intermediate.dense"]),
    "coft_b32_t7": OFTConfig(r=0, oft_block_size=32, coft=True, eps=0.3,
                             num_cayley_neumann_terms=7, target_modules=["value", "output.dense"]),
}

# Requests in interleaved order: repeated adapters, the base model (None), one token and longer.
REQUESTS = [("exact_r4", 5), (None, 3), ("neumann_b16", 1), ("coft_b32_t7", 7),
            ("exact_b8_shared", 4), ("neumann_b16", 6), (None, 1), ("coft_b32_t7", 2),
            ("exact_r4", 1)]

# The tolerance, from the arithmetic: served (s) and PEFT (p) evaluate the same network and differ
# only in rounding (oft's R, computed in float64 and rounded once, against PEFT's bmm powers or
# solve in the model's dtype; the order of the b-term dot products of x R; the padded batch's
# longer reductions in attention), so each is within the network's roundoff E of the exact
# result t (oft's R is the more accurate one), and |s - p| <= |s - t| + |p - t| <= 2 E. E is
# measured, not chosen: PEFT's own error in that dtype against its float64 run, over all
# requests (relative to each request's largest output), per output. For float64, E scales from
# float32's by the ratio of unit roundoffs (first-order error analysis: the network's
# amplification of roundoff does not depend on the precision).
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
DTYPE_IDS = ["float32", "float64", "bfloat16"]


def base_model(dtype):
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**CONFIG)).eval().to(dtype)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each adapter, random nonzero weights, saved by PEFT's save_pretrained."""
    root = tmp_path_factory.mktemp("adapters")
    paths = {}
    for k, (name, config) in enumerate(ADAPTERS.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's notes on r/oft_block_size and COFT
            model = get_peft_model(base_model(torch.float32), config)
        g = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "oft_" in n:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
    return paths


def peft_reference(folders, dtype):
    model = PeftModel.from_pretrained(base_model(dtype), folders["neumann_b16"],
                                      adapter_name="neumann_b16")
    for name in list(ADAPTERS)[1:]:
        model.load_adapter(folders[name], adapter_name=name)
    return model.eval()


def batch(requests, seed=7):
    """Right-padded token ids and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    length = max(n for _, n in requests)
    ids = torch.zeros(len(requests), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (_, n) in enumerate(requests):
        ids[i, :n] = torch.randint(1, CONFIG["vocab_size"], (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def alone(reference, adapter, input_ids):
    """PEFT running one request alone with `adapter` active (None: adapters disabled)."""
    if adapter is None:
        with reference.disable_adapter():
            return reference(input_ids=input_ids)
    reference.set_adapter(adapter)
    return reference(input_ids=input_ids)


def relative(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


OUTPUTS = ("hidden states", "pooled")


def outputs(result):
    return result.last_hidden_state, result.pooler_output


@pytest.fixture(scope="module")
def peft_alone(folders):
    """Each request of REQUESTS run alone through PEFT, per dtype: {dtype: [(hidden, pooled)]}."""
    input_ids, _ = batch(REQUESTS)
    runs = {}
    with torch.no_grad():
        for dtype in DTYPES:
            reference = peft_reference(folders, dtype)
            runs[dtype] = [
                tuple(o.double() for o in outputs(alone(reference, a, input_ids[i:i + 1, :n])))
                for i, (a, n) in enumerate(REQUESTS)]
    return runs


def roundoff(peft_alone, dtype):
    """E per output (hidden states, pooled): PEFT's own largest relative error in `dtype` against
    its float64 run over all requests (float64's own: float32's scaled by the unit roundoffs)."""
    if dtype == torch.float64:
        return [e * 2.0**-53 / 2.0**-24 for e in roundoff(peft_alone, torch.float32)]
    return [max(relative(request[k], truth[k])
                for request, truth in zip(peft_alone[dtype], peft_alone[torch.float64]))
            for k in range(2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_batch_equals_peft_request_by_request(folders, peft_alone, dtype):
    served = oft.serve.from_peft(base_model(dtype), folders)
    assert served.adapters == list(ADAPTERS)
    assert all(type(layer) is oft.serve.ServingLinear for layer, _ in served.layers.values())
    assert len(served.layers) == 13  # 2 x (q, k, v, attention out, intermediate, out) + pooler
    input_ids, mask = batch(REQUESTS)
    tols = [2 * e for e in roundoff(peft_alone, dtype)]
    with torch.no_grad():
        out = outputs(served(input_ids=input_ids, attention_mask=mask,
                             adapter_ids=[a for a, _ in REQUESTS]))
        base = outputs(served(input_ids=input_ids, attention_mask=mask))  # no ids: the base
    errors, effects = [[], []], [[], []]
    for i, (adapter, n) in enumerate(REQUESTS):
        got = (out[0][i:i + 1, :n], out[1][i:i + 1])
        plain = (base[0][i:i + 1, :n], base[1][i:i + 1])
        for k, (g, want, p) in enumerate(zip(got, peft_alone[dtype][i], plain)):
            assert g.dtype == dtype
            error = relative(g, want)
            errors[k].append(error)
            assert error <= tols[k], (f"request {i} ({adapter}, {n} tokens) {OUTPUTS[k]}: "
                                      f"{error:.3g} > {tols[k]:.3g}")
            if adapter is not None:
                effects[k].append(relative(p, want))
    for k in range(2):
        print(f"{dtype} {OUTPUTS[k]}: largest relative difference to PEFT {max(errors[k]):.3g}, "
              f"tolerance 2 E = {tols[k]:.3g}, smallest adapter effect {min(effects[k]):.3g}")
        # Every adapter changes every output by more than twice the tolerance (bfloat16's
        # pooled output is the closest, 2.4x): a skipped adapter cannot pass.
        assert min(effects[k]) > 2 * tols[k]


def test_ids_per_request_tensor_and_generation_context(folders):
    """Indices in an int64 tensor, and `using` around several forwards (as generate does)."""
    served = oft.serve.from_peft(base_model(torch.float32), folders)
    requests = [(a, n) for a, n in REQUESTS]
    input_ids, mask = batch(requests)
    names = [a for a, _ in requests]
    index = torch.tensor([-1 if a is None else served.index(a) for a in names])
    with torch.no_grad():
        by_name = served(input_ids=input_ids, attention_mask=mask, adapter_ids=names)
        by_index = served(input_ids=input_ids, attention_mask=mask, adapter_ids=index)
        with served.using(index):
            first = served.model(input_ids=input_ids, attention_mask=mask)
            second = served.model(input_ids=input_ids[:, :2], attention_mask=mask[:, :2])
    assert torch.equal(by_name.last_hidden_state, by_index.last_hidden_state)
    assert torch.equal(first.last_hidden_state, by_name.last_hidden_state)
    assert second.last_hidden_state.shape[1] == 2
    assert all(layer.ids is None for layer, _ in served.layers.values())  # cleared after


def test_peft_model_with_loaded_adapters_serves_the_same(folders):
    served = oft.serve.from_peft(base_model(torch.float64), folders)
    consumed = oft.serve.from_peft(peft_reference(folders, torch.float64))
    assert consumed.adapters == served.adapters
    input_ids, mask = batch(REQUESTS)
    names = [a for a, _ in REQUESTS]
    with torch.no_grad():
        a = served(input_ids=input_ids, attention_mask=mask, adapter_ids=names)
        b = consumed(input_ids=input_ids, attention_mask=mask, adapter_ids=names)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert not any(type(m).__module__.startswith("peft") for m in consumed.model.modules())


def test_a_subset_of_a_peft_models_adapters(folders):
    """Layers that only the adapters left out target go back to their base layer (PEFT's forward
    would apply its active adapter to every token there)."""
    keep = ["exact_r4", "neumann_b16"]
    subset = oft.serve.from_peft(peft_reference(folders, torch.float64), keep)
    assert subset.adapters == keep
    assert not any(type(m).__module__.startswith("peft") for m in subset.model.modules())
    key = subset.model.encoder.layer[0].attention.self.key
    assert type(key) is torch.nn.Linear  # only exact_b8_shared targets key
    requests = [(a, n) for a, n in REQUESTS if a in keep or a is None]
    input_ids, mask = batch(requests)
    everything = oft.serve.from_peft(base_model(torch.float64), folders)
    names = [a for a, _ in requests]
    with torch.no_grad():
        got = subset(input_ids=input_ids, attention_mask=mask, adapter_ids=names)
        want = everything(input_ids=input_ids, attention_mask=mask, adapter_ids=names)
    # The same R and the same arithmetic per token: only the slot numbers differ.
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)


def test_adapter_bytes_are_the_blocks_each_adapter_keeps(folders):
    served = oft.serve.from_peft(base_model(torch.float32), folders)
    d, ffn, layers = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["num_hidden_layers"]
    # float32 R: query and value (d/16 blocks of 16), per encoder layer.
    assert served.adapter_bytes()["neumann_b16"] == layers * 2 * d * 16 * 4
    # One shared 8 x 8 block in key and every "dense" (attention output, intermediate, output;
    # PEFT matches names by suffix) per encoder layer, and the pooler.
    assert served.adapter_bytes()["exact_b8_shared"] == (layers * 4 + 1) * 8 * 8 * 4
    # r = 4 blocks in query (b = d/4) and intermediate (b = d/4).
    assert served.adapter_bytes()["exact_r4"] == layers * 2 * 4 * (d // 4) ** 2 * 4
    # b = 32 in value (d/32 blocks), attention output (d/32) and FFN output (ffn/32).
    assert served.adapter_bytes()["coft_b32_t7"] == layers * (2 * d + ffn) * 32 * 4
    # The bank options reach every layer: bfloat16 storage keeps half the bytes.
    half = oft.serve.from_peft(base_model(torch.float32), folders, storage=torch.bfloat16)
    assert all(2 * half.adapter_bytes()[name] == served.adapter_bytes()[name] for name in folders)


def block_diagonal_reference(x, blocks_of_slot, ids):
    """Row t times diag(R, ..., R) of its slot, in float64 (the row itself for -1)."""
    y = x.double().clone()
    for t, slot in enumerate(ids.tolist()):
        if slot < 0:
            continue
        blocks = blocks_of_slot[slot]
        r = x.shape[-1] // blocks.shape[-1] if blocks.shape[0] == 1 else blocks.shape[0]
        full = torch.block_diag(*[blocks[0 if blocks.shape[0] == 1 else i] for i in range(r)])
        y[t] = x[t].double() @ full.double()
    return y


def random_blocks(g, b, seed, dtype):
    q, _ = torch.linalg.qr(torch.randn(g, b, b, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q.to(dtype)


@pytest.mark.parametrize("routing", ["auto", "contiguous", "gathered"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_bank_rotation_is_each_tokens_block_diagonal_product(dtype, routing):
    d = 48
    bank = oft.serve.AdapterBankRotation(d, 4, dtype=dtype)
    blocks = {bank.add(random_blocks(6, 8, 1, dtype)): random_blocks(6, 8, 1, dtype),
              bank.add(random_blocks(1, 16, 2, dtype), shared=True): random_blocks(1, 16, 2, dtype),
              bank.add(random_blocks(2, 24, 3, dtype)): random_blocks(2, 24, 3, dtype)}
    assert len(bank) == 3 and 1 in bank and 3 not in bank
    g = torch.Generator().manual_seed(4)
    x = (2 * torch.rand(3, 7, d, generator=g) - 1).to(dtype)  # |x| <= 1
    per_token = torch.randint(-1, 3, (3, 7), generator=g)  # int64, -1 included
    y = bank(x, per_token, routing=routing)
    want = block_diagonal_reference(x.reshape(-1, d), blocks, per_token.reshape(-1)).view_as(y)
    # One length-b dot product per output with |x| <= 1 and an orthogonal column: within
    # gamma_b sqrt(b) each side (Higham eq. 3.5), b = 24 at most.
    u = torch.finfo(dtype).eps / 2
    b = 24
    bound = 2 * (b * u / (1 - b * u)) * b**0.5
    assert (y.double() - want).abs().max().item() <= bound
    # Per-request ids: the same as each request's id repeated over its tokens.
    per_request = torch.tensor([2, -1, 0])
    assert torch.equal(bank(x, per_request, routing=routing),
                       bank(x, per_request[:, None].expand(3, 7), routing=routing))


def test_bank_bfloat16_activations_are_the_float32_result_rounded_once():
    bank = oft.serve.AdapterBankRotation(32, 2)
    bank.add(random_blocks(4, 8, 5, torch.float32))
    bank.add(random_blocks(1, 16, 6, torch.float32), shared=True)
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(7)).bfloat16()
    ids = torch.tensor([0, 1, 1, -1, 0, 0, 0, 1, -1])
    for routing in ("contiguous", "gathered"):
        y = bank(x, ids, routing=routing)
        assert y.dtype == torch.bfloat16
        rounded = bank(x.float(), ids, routing=routing).bfloat16()
        assert torch.equal(y.view(torch.int16), rounded.view(torch.int16))


def test_bank_bfloat16_storage_is_the_float_bank_of_the_rounded_rotation():
    blocks = [random_blocks(4, 8, 11, torch.float32), random_blocks(2, 16, 12, torch.float32)]
    half = oft.serve.AdapterBankRotation(32, 2, storage=torch.bfloat16)
    rounded = oft.serve.AdapterBankRotation(32, 2)
    for r in blocks:
        half.add(r)
        rounded.add(r.bfloat16().float())  # rounded once to nearest even, as the bank keeps it
    assert half.bank.storage == "bfloat16" and rounded.bank.storage == "float32"
    assert 2 * half.bank.adapter_bytes(0) == rounded.bank.adapter_bytes(0)
    x = torch.randn(11, 32, generator=torch.Generator().manual_seed(13))
    ids = torch.tensor([0, 1, -1, 1, 0, 0, 1, 1, 0, -1, 1])
    for routing in ("contiguous", "gathered"):
        assert torch.equal(half(x, ids, routing=routing), rounded(x, ids, routing=routing))
    with pytest.raises(TypeError, match="storage torch.bfloat16 is for float32 banks"):
        oft.serve.AdapterBankRotation(32, 2, dtype=torch.float64, storage=torch.bfloat16)
    with pytest.raises(TypeError, match="storage torch.float16"):
        oft.serve.AdapterBankRotation(32, 2, storage=torch.float16)


def test_bank_dot_product_arithmetic_is_within_its_bound():
    if not oft.has_bf16_dot_product:
        with pytest.raises(ValueError, match="needs oft._core built with AVX512_BF16"):
            oft.serve.AdapterBankRotation(32, 2, bf16_arithmetic="dot_product")
        pytest.skip("oft._core has no AVX512_BF16 here: the refusal above is what it can check")
    # Near-identity blocks, as OFT's are: R = Cayley(Q) of a small skew Q.
    g = torch.Generator().manual_seed(14)
    blocks = []
    for count, b in ((4, 8), (1, 32), (2, 16)):
        a = 0.1 * torch.randn(count, b, b, generator=g, dtype=torch.float64)
        q = a - a.transpose(-1, -2)
        eye = torch.eye(b, dtype=torch.float64)
        blocks.append(torch.linalg.solve(eye - q, eye + q).float())
    bank = oft.serve.AdapterBankRotation(32, 3, bf16_arithmetic="dot_product")
    floats = oft.serve.AdapterBankRotation(32, 3)
    for r in blocks:
        bank.add(r, shared=r.shape[0] == 1)
        floats.add(r, shared=r.shape[0] == 1)
    assert bank.bank.bf16_arithmetic == "dot_product"
    x = (2 * torch.rand(40, 32, generator=g) - 1).bfloat16()
    ids = torch.randint(-1, 3, (40,), generator=g)
    # docs/bf16.md, entrywise: E = 2^-8' |X||D| + gamma_{b+1} (|X| + (1 + 2^-8')|X||D|) (F, the
    # subnormal term, is nil for this data), |Y - X R| <= 2^-8 (|X R| + E) + E.
    u8, b_max = 2.0**-8 + 2.0**-22, 32
    gamma = (b_max + 1) * 2.0**-24 / (1 - (b_max + 1) * 2.0**-24)
    blocks_of_slot = dict(enumerate(blocks))
    exact = block_diagonal_reference(x.float(), blocks_of_slot, ids)
    xd = x.double().abs()
    d_abs = {k: (r.double() - torch.eye(r.shape[-1], dtype=torch.float64)).abs()
             for k, r in blocks_of_slot.items()}
    xd_abs = block_diagonal_reference(xd, d_abs, ids) - torch.where(ids[:, None] >= 0, 0.0, xd)
    e = u8 * xd_abs + gamma * (xd + (1 + u8) * xd_abs)
    bound = 2.0**-8 * (exact.abs() + e) + e
    for routing in ("contiguous", "gathered"):
        y = bank(x, ids, routing=routing)
        assert y.dtype == torch.bfloat16
        assert ((y.double() - exact).abs() <= bound).all()
        # Not the float arithmetic's bits everywhere (D is rounded), yet the same rotation.
        assert not torch.equal(y, floats(x, ids, routing=routing))
    with pytest.raises(ValueError, match="'dot_product' is for float32 banks"):
        oft.serve.AdapterBankRotation(32, 2, dtype=torch.float64, bf16_arithmetic="dot_product")
    with pytest.raises(ValueError, match="'fast' is not 'float' or 'dot_product'"):
        oft.serve.AdapterBankRotation(32, 2, bf16_arithmetic="fast")


def test_serving_linear_reuses_its_rotated_buffer_across_batch_sizes():
    # ServingLinear rotates into one buffer per layer (grown to the largest batch): whatever the
    # order of batch sizes, each forward equals the base layer over a fresh rotation, and an
    # earlier forward's output is not touched by a later one.
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 5)
    layer = oft.serve.ServingLinear(base, 2)
    layer.rotation.add(random_blocks(4, 8, 8, torch.float32))
    layer.rotation.add(random_blocks(2, 16, 9, torch.float32))
    with torch.no_grad():
        outputs = []
        for rows in (3, 11, 2, 11):
            x = torch.randn(rows, 32)
            ids = torch.randint(-1, 2, (rows,))
            z = layer(x, ids)
            assert torch.equal(z, base(layer.rotation(x, ids)))
            outputs.append((z.clone(), z))
        for kept, z in outputs:
            assert torch.equal(kept, z)
    with pytest.raises(ValueError, match="out .* must be a contiguous CPU tensor of shape"):
        layer.rotation(torch.randn(3, 32), [0, 1, 0], out=torch.empty(2, 32))


def test_shards_together_equal_the_whole():
    """Row-parallel ranks: each bank holds its input columns' blocks of the same adapters."""
    blocks = [random_blocks(4, 8, 1, torch.float32), random_blocks(1, 16, 2, torch.float32)]
    whole = oft.serve.AdapterBankRotation(32, 2)
    shards = [oft.serve.AdapterBankRotation(32, 2, shard=(0, 16)),
              oft.serve.AdapterBankRotation(32, 2, shard=(16, 16))]
    for bank in (whole, *shards):
        bank.add(blocks[0])
        bank.add(blocks[1], shared=True)
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([1, 0, -1, 1, 1, 0])
    parts = [shards[0](x[:, :16], ids), shards[1](x[:, 16:], ids)]  # strided views of x
    assert torch.equal(torch.cat(parts, dim=1), whole(x, ids))
    assert shards[0].adapter_bytes(0) == whole.adapter_bytes(0) // 2


def test_replace_and_remove():
    bank = oft.serve.AdapterBankRotation(16, 2, dtype=torch.float64)
    first = bank.add(random_blocks(2, 8, 1, torch.float64))
    bank.replace(first, random_blocks(1, 16, 2, torch.float64))
    x = torch.randn(3, 16, dtype=torch.float64)
    want = x @ random_blocks(1, 16, 2, torch.float64)[0]
    torch.testing.assert_close(bank(x, 0), want, rtol=0, atol=1e-14)
    bank.remove(first)
    assert len(bank) == 0
    with pytest.raises(ValueError, match=r"ids\[0\]=0 names no adapter"):
        bank(x, 0)


def test_bad_input_is_refused_by_name(folders):
    bank = oft.serve.AdapterBankRotation(16, 2)
    bank.add(random_blocks(2, 8, 1, torch.float32))
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"adapter id 2 is out of range \[-1, 2\)"):
        bank(x, torch.tensor([0, 2, 0, 0]))
    with pytest.raises(ValueError, match=r"adapter id -2 is out of range"):
        bank(x, [0, -2, 0, 0])
    with pytest.raises(ValueError, match=r"ids\[1\]=1 names no adapter"):  # empty slot
        bank(x, [0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"ids \[3\] fit neither x's tokens \[4\]"):
        bank(x, [0, 0, 0])
    with pytest.raises(TypeError, match=r"ids \[4\] are torch.float32"):
        bank(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"x \[4, 16\] requires grad; oft.serve is forward-only"):
        bank(x.clone().requires_grad_(), [0, 0, 0, 0])
    with pytest.raises(TypeError, match=r"x \[4, 16\] is torch.float16; this torch.float32 bank "
                                        r"takes torch.float32 or torch.bfloat16"):
        bank(x.half(), [0, 0, 0, 0])
    with pytest.raises(TypeError, match=r"is torch.float32; this torch.float64 bank takes "
                                        r"torch.float64 activations"):
        oft.serve.AdapterBankRotation(16, 1, dtype=torch.float64)(x, -1)
    with pytest.raises(ValueError, match=r"rotations has shape \[1, 8, 8\], expected \[2, 8, 8\]"):
        bank.add(random_blocks(1, 8, 1, torch.float32))
    with pytest.raises(ValueError, match=r"routing 'sorted' is not one of"):
        bank(x, 0, routing="sorted")
    with pytest.raises(TypeError, match=r"dtype torch.float16 is not torch.float32 or"):
        oft.serve.AdapterBankRotation(16, 1, dtype=torch.float16)

    served = oft.serve.from_peft(base_model(torch.float32), folders)
    input_ids, mask = batch(REQUESTS[:3])
    with pytest.raises(ValueError, match=r"adapter_ids: adapter id 4 is out of range \[-1, 4\)"):
        served(input_ids=input_ids, attention_mask=mask, adapter_ids=[0, 4, None])
    with pytest.raises(ValueError, match=r"no adapter named 'nobody'"):
        served(input_ids=input_ids, attention_mask=mask, adapter_ids=["nobody", None, None])
    with pytest.raises(ValueError,
                       match=r"ids \[2\] fit neither x's tokens \[3, 5\] nor its requests \[3\]"):
        served(input_ids=input_ids, attention_mask=mask, adapter_ids=[0, None])
    layer = served.layers["encoder.layer.0.attention.self.query"][0]
    with pytest.raises(ValueError, match=r"x \[2, 64\] requires grad; oft.serve is forward-only"):
        layer(torch.randn(2, 64, requires_grad=True), [0, 0])
    layer.base_layer.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"base layer's parameters require grad under grad mode"):
        layer(torch.randn(2, 64), [0, 0])
    with torch.no_grad():
        layer(torch.randn(2, 64), [0, 0])  # no gradients asked for: served


def test_other_peft_methods_are_refused(tmp_path, folders):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = get_peft_model(base_model(torch.float32), LoraConfig(target_modules=["query"]))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(TypeError,
                       match=r"adapter 'lora' \(.*\) is PEFT PeftType.LORA; oft.serve serves"):
        oft.serve.from_peft(base_model(torch.float32),
                            {"oft": folders["neumann_b16"], "lora": tmp_path / "lora"})
    with pytest.raises(ValueError, match=r"has no adapter_config.json"):
        oft.serve.from_peft(base_model(torch.float32), [os.fspath(tmp_path)])
