"""oft's PyTorch face of BOFT and HRA against the real PEFT (0.21.2) layers: forward, dX and the
gradients of PEFT's own parameters (boft_R, boft_s; hra_u), through ``oft.peft.accelerate`` and the
``oft.torch`` functions and modules.

Tolerances, normwise relative: float64 1e-12 (both sides are backward stable, with a few hundred
roundings of 1.1e-16 at most at these sizes; measured <= 5e-16). float32: 100 eps32 = 1.2e-5.
PEFT forms the d x d matrix M (m dense products) and oft applies m block passes; each is backward
stable with an error of O((m + b) eps32) per entry at b <= 8, m <= 3 (measured <= 4e-7), so
100 eps leaves a margin for the other summation orders without hiding an error of the formula
(a wrong sign or block moves the result by O(1)).
"""
import copy
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
import peft.tuners.boft.layer as boft_layer  # noqa: E402
from peft import BOFTConfig, HRAConfig, get_peft_model  # noqa: E402

import oft  # noqa: E402
import oft.peft  # noqa: E402
import oft.torch  # noqa: E402
from peft_fbd_stand_in import FbdStandIn  # noqa: E402  (PEFT's fbd_cuda on the CPU)

EPS32 = torch.finfo(torch.float32).eps
TOL = {torch.float64: 1e-12, torch.float32: 100 * EPS32}


@pytest.fixture(autouse=True)
def block_diagonal_stand_in():
    saved = boft_layer._FBD_CUDA
    boft_layer._FBD_CUDA = FbdStandIn
    yield
    boft_layer._FBD_CUDA = saved


class OneLayer(torch.nn.Module):
    def __init__(self, d, n_out, bias):
        super().__init__()
        self.proj = torch.nn.Linear(d, n_out, bias=bias)

    def forward(self, x):
        return self.proj(x)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def peft_layer_model(config, d, n_out, bias, dtype, seed=0):
    """A one-Linear PEFT model with random, non-trivial adapter values (the PEFT inits give
    R = I), in dtype."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HRA's odd-r init warning, PEFT's fbd warning
        model = get_peft_model(OneLayer(d, n_out, bias), config).to(dtype)
    layer = model.base_model.model.proj
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "boft_R" in name or "hra_u" in name:
                p.copy_(0.5 * torch.randn_like(p))  # full A, not skew: PEFT takes (A - A^T)/2
            elif "boft_s" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def step(model, x, grad_seed=1, forward_seed=None):
    """y, dX and the trainable parameters' gradients (by short name) of one forward + backward."""
    x = x.clone().requires_grad_()
    if forward_seed is not None:
        torch.manual_seed(forward_seed)
    y = model(x)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(grad_seed))
    y.backward(g)
    grads = {n.split(".")[-2]: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return y.detach(), x.grad, grads


def compare(config, d, n_out, bias, dtype, rows=7, train=False, forward_seed=None):
    reference = peft_layer_model(config, d, n_out, bias, dtype)
    fast = copy.deepcopy(reference)
    assert oft.peft.accelerate(fast) == ["base_model.model.proj"]
    for model in (reference, fast):
        model.train(train)
    x = torch.randn(2, rows, d, dtype=dtype, generator=torch.Generator().manual_seed(5))
    expected = step(reference, x, forward_seed=forward_seed)
    got = step(fast, x, forward_seed=forward_seed)
    assert set(got[2]) == set(expected[2]) and got[2]
    errors = {"y": rel(got[0], expected[0]), "dX": rel(got[1], expected[1])}
    errors.update({"d" + n: rel(got[2][n], expected[2][n]) for n in expected[2]})
    tol = TOL[dtype]
    assert all(e <= tol for e in errors.values()), errors
    return errors


# (id, d, n_out, bias, PEFT config fields): m = 1..3 (PEFT's boft_n_butterfly_factor), b from
# block_size or from block_num.
BOFT_CASES = [
    ("bs4_m1", 16, 12, True, dict(boft_block_size=4, boft_n_butterfly_factor=1)),
    ("bs4_m2", 16, 12, True, dict(boft_block_size=4, boft_n_butterfly_factor=2)),
    ("bs4_m3", 32, 8, True, dict(boft_block_size=4, boft_n_butterfly_factor=3)),
    ("bs8_m2_nobias", 32, 12, False, dict(boft_block_size=8, boft_n_butterfly_factor=2)),
    ("bn4_m3", 32, 8, True, dict(boft_block_size=0, boft_block_num=4,
                                 boft_n_butterfly_factor=3)),  # b = 8 from N = 4
    ("bn8_m1", 16, 12, True, dict(boft_block_size=0, boft_block_num=8,
                                  boft_n_butterfly_factor=1)),  # b = 2
]
HRA_CASES = [
    ("r2", 16, 12, True, dict(r=2, apply_GS=False)),
    ("r2_gs", 16, 12, True, dict(r=2, apply_GS=True)),
    ("r3", 16, 12, True, dict(r=3, apply_GS=False)),
    ("r3_gs_nobias", 16, 12, False, dict(r=3, apply_GS=True)),
    ("r8", 32, 8, True, dict(r=8, apply_GS=False)),
    ("r16_d16", 16, 12, True, dict(r=16, apply_GS=False)),
]
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["f64", "f32"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,d,n_out,bias,fields", BOFT_CASES, ids=[c[0] for c in BOFT_CASES])
def test_boft_equals_pefts_forward_and_gradients(name, d, n_out, bias, fields, dtype):
    config = BOFTConfig(target_modules=["proj"], **fields)
    errors = compare(config, d, n_out, bias, dtype)
    assert set(errors) == {"y", "dX", "dboft_R", "dboft_s"}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,d,n_out,bias,fields", HRA_CASES, ids=[c[0] for c in HRA_CASES])
def test_hra_equals_pefts_forward_and_gradients(name, d, n_out, bias, fields, dtype):
    config = HRAConfig(target_modules=["proj"], **fields)
    errors = compare(config, d, n_out, bias, dtype)
    assert set(errors) == {"y", "dX", "dhra_u"}  # PEFT reads W0 through .data: no dW0


# bfloat16 models: PEFT keeps the adapter weights of a bfloat16 model in float32
# (autocast_adapter_dtype). oft rotates the bfloat16 input in float32 and rounds it once, then the
# base layer runs in bfloat16; PEFT rounds its d x d rotation to bfloat16 (BOFT) or runs the layer
# in float32 (HRA). Both are compared with the float64 layer on the same (bfloat16-exact) input,
# weights and upstream gradient. Bound: u = 2^-9 is bfloat16's unit roundoff; each of y, dX and
# the parameter gradients passes through at most two bfloat16 roundings (the rotated input or the
# base's dX, then the output) with float32 sums between, so 4u = 2^-7 normwise. A wrong sign, a
# transposed block or a missing boft_s moves them by O(1).
BF16_BOUND = 2.0 ** -7


@pytest.mark.parametrize("family", ["boft", "hra"])
def test_bfloat16_model_is_within_two_roundings_of_float64(family, monkeypatch):
    fields = (dict(boft_block_size=8, boft_n_butterfly_factor=2) if family == "boft"
              else dict(r=4, apply_GS=False))
    config_class = BOFTConfig if family == "boft" else HRAConfig
    d, n_out = 32, 24
    source = peft_layer_model(config_class(target_modules=["proj"], **fields), d, n_out, True,
                              torch.float64)
    base = OneLayer(d, n_out, True)
    with torch.no_grad():  # the bfloat16 model's base: the float64 one rounded
        base.proj.weight.copy_(source.base_model.model.proj.base_layer.weight)
        base.proj.bias.copy_(source.base_model.model.proj.base_layer.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_peft_model(base.to(torch.bfloat16),
                                   config_class(target_modules=["proj"], **fields))
    adapters = {n: p for n, p in reference.named_parameters() if "boft_" in n or "hra_u" in n}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    exact = dict(source.named_parameters())
    with torch.no_grad():
        for n, p in adapters.items():
            p.copy_(exact[n])
        # The float64 layer the two are measured against: the same rounded numbers in float64.
        for n, p in source.named_parameters():
            p.copy_(dict(reference.named_parameters())[n].double())
    fast = copy.deepcopy(reference)
    assert oft.peft.accelerate(fast) == ["base_model.model.proj"]
    calls = []
    for name in ("butterfly_rotate", "householder_rotate"):
        original = getattr(oft.peft, name)
        monkeypatch.setattr(oft.peft, name,
                            lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))

    x = torch.randn(2, 7, d, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    g = torch.randn(2, 7, n_out, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)

    def step_with(model, inputs, upstream):
        inputs = inputs.clone().requires_grad_()
        y = model(inputs)
        y.backward(upstream)
        return y.detach(), inputs.grad, {n.split(".")[-2]: p.grad.clone()
                                         for n, p in model.named_parameters() if p.grad is not None}

    exact_step = step_with(source, x.double(), g.double())
    errors = {}
    for label, model in (("peft", reference), ("oft", fast)):
        y, dx, grads = step_with(model, x, g)
        assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16
        errors[label] = {"y": rel(y.double(), exact_step[0]), "dX": rel(dx.double(), exact_step[1])}
        errors[label].update({"d" + n: rel(grads[n].double(), exact_step[2][n])
                              for n in exact_step[2] if n in grads})
    assert calls, "the bfloat16 layer fell back to PEFT's forward"
    assert set(errors["oft"]) == set(errors["peft"]) and len(errors["oft"]) >= 3
    assert all(e <= BF16_BOUND for e in errors["oft"].values()), errors


def test_boft_dropout_in_training_draws_pefts_blocks():
    config = BOFTConfig(target_modules=["proj"], boft_block_size=4, boft_n_butterfly_factor=2,
                        boft_dropout=0.5)
    compare(config, 32, 8, True, torch.float64, train=True, forward_seed=11)
    # ... and the dropout did act: training differs from eval at that seed.
    model = peft_layer_model(config, 32, 8, True, torch.float64)
    oft.peft.accelerate(model)
    x = torch.randn(4, 32, dtype=torch.float64)
    torch.manual_seed(11)
    trained = model.train()(x)
    assert rel(trained, model.eval()(x)) > 1e-3


@pytest.mark.parametrize("family", ["boft", "hra"])
def test_merged_equals_unmerged(family):
    config = (BOFTConfig(target_modules=["proj"], boft_block_size=4, boft_n_butterfly_factor=2)
              if family == "boft" else HRAConfig(target_modules=["proj"], r=4))
    model = peft_layer_model(config, 16, 12, True, torch.float64).eval()
    oft.peft.accelerate(model)
    x = torch.randn(5, 16, dtype=torch.float64)
    unmerged = model(x)
    model.merge_adapter()
    assert rel(model(x), unmerged) <= 1e-12
    model.unmerge_adapter()
    assert rel(model(x), unmerged) <= 1e-12


@pytest.mark.parametrize("family", ["boft", "hra"])
def test_disabled_and_several_adapters_are_pefts(family):
    def config():
        return (BOFTConfig(target_modules=["proj"], boft_block_size=4)
                if family == "boft" else HRAConfig(target_modules=["proj"], r=2))
    reference = peft_layer_model(config(), 16, 12, True, torch.float64).eval()
    reference.add_adapter("other", config())
    fast = copy.deepcopy(reference)
    oft.peft.accelerate(fast)
    x = torch.randn(3, 16, dtype=torch.float64)
    with fast.disable_adapter():
        assert torch.equal(fast(x), fast.base_model.model.proj.base_layer(x))
    for model in (reference, fast):
        model.base_model.model.proj.set_adapter(["default", "other"])
    assert torch.equal(fast(x), reference(x))  # PEFT's own forward on both


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = torch.nn.Linear(32, 32)
        self.lin2 = torch.nn.Linear(32, 8)
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x)))


@pytest.mark.parametrize("family", ["boft", "hra"])
def test_accelerate_a_small_model(family):
    targets = ["lin1", "lin2"]
    config = (BOFTConfig(target_modules=targets, boft_block_size=4, boft_n_butterfly_factor=1)
              if family == "boft" else HRAConfig(target_modules=targets, r=4))
    torch.manual_seed(3)
    reference = get_peft_model(TwoLayers(), config)
    fast = copy.deepcopy(reference)
    names = oft.peft.accelerate(fast)
    assert names == ["base_model.model.lin1", "base_model.model.lin2"]
    assert list(fast.state_dict()) == list(reference.state_dict())
    x = torch.randn(6, 32)
    y0, dx0, g0 = step(reference, x)
    y1, dx1, g1 = step(fast, x)
    assert rel(y1, y0) <= TOL[torch.float32] and rel(dx1, dx0) <= TOL[torch.float32]
    assert all(rel(g1[n], g0[n]) <= TOL[torch.float32] for n in g0)
    assert oft.peft.restore(fast) == 2
    assert type(fast.base_model.model.lin1) is type(reference.base_model.model.lin1)


@pytest.mark.parametrize("family", ["boft", "hra"])
def test_conv2d_stays_pefts(family):
    config = (BOFTConfig(target_modules=["lin1", "conv"], boft_block_size=2)
              if family == "boft" else HRAConfig(target_modules=["lin1", "conv"], r=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(TwoLayers(), config)
    with pytest.raises(TypeError, match=r"conv is a PEFT .*Conv2d; oft accelerates PEFT's BOFT"):
        oft.peft.accelerate(model)
    assert oft.peft.accelerate(model, skip_unsupported=True) == ["base_model.model.lin1"]


def test_modules_equal_pefts_layers():
    torch.manual_seed(4)
    reference = peft_layer_model(
        BOFTConfig(target_modules=["proj"], boft_block_size=4, boft_n_butterfly_factor=2),
        16, 12, True, torch.float64)
    layer = reference.base_model.model.proj
    module = oft.torch.ButterflyLinear(copy.deepcopy(layer.base_layer), block_size=4, factors=2)
    with torch.no_grad():
        module.boft_R.copy_(layer.boft_R["default"])
        module.boft_s.copy_(layer.boft_s["default"])
    x = torch.randn(5, 16, dtype=torch.float64)
    assert rel(module(x), reference(x)) <= 1e-12
    assert not any(p.requires_grad for p in module.base.parameters())

    hra = peft_layer_model(HRAConfig(target_modules=["proj"], r=4, apply_GS=True), 16, 12, True,
                           torch.float64)
    hra_layer = hra.base_model.model.proj
    module = oft.torch.HouseholderLinear(copy.deepcopy(hra_layer.base_layer), 4, apply_GS=True)
    with torch.no_grad():
        module.hra_u.copy_(hra_layer.hra_u["default"])
    assert rel(module(x), hra(x)) <= 1e-12
    # PEFT's symmetric init (even r): R_H = I.
    fresh = oft.torch.HouseholderLinear(torch.nn.Linear(16, 4).double(), 4)
    assert rel(fresh(x), fresh.base(x)) <= 1e-14


def test_gradcheck_in_double():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    boft_R = (0.3 * torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=gen)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, r: oft.torch.butterfly_rotate(a, r), (x, boft_R))
    assert torch.autograd.gradcheck(
        lambda a, r: oft.torch.butterfly_rotate(a, r, policy="cayley_neumann", k=3), (x, boft_R))
    u = torch.randn(16, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    for gs in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, v: oft.torch.householder_rotate(a, v, apply_GS=gs), (x, u))


def test_bad_inputs_name_the_argument():
    x = torch.randn(3, 16)
    boft_R = torch.zeros(2, 4, 4, 4)
    with pytest.raises(TypeError, match=r"x \[3, 16\] is torch.float32 but boft_R"):
        oft.torch.butterfly_rotate(x, boft_R.double())
    with pytest.raises(TypeError, match=r"x \[3, 16\] is torch.int64"):
        oft.torch.butterfly_rotate(torch.zeros(3, 16, dtype=torch.long), boft_R)
    with pytest.raises(ValueError, match=r"last dimension must be 16"):
        oft.torch.butterfly_rotate(torch.randn(3, 12), boft_R)
    with pytest.raises(ValueError, match=r"boft_R must be a \[m, N, b, b\] tensor, got "
                                         r"\[2, 4, 4\]"):
        oft.torch.butterfly_rotate(x, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"policy 'exponential' is not one of"):
        oft.torch.butterfly_rotate(x, boft_R, policy="exponential")
    with pytest.raises(ValueError,
                       match=r"butterfly blocks N=4 must be a multiple of 2\^\(m-1\)=8"):
        oft.torch.butterfly_rotate(x, torch.zeros(4, 4, 4, 4))
    with pytest.raises(ValueError, match=r"hra_u \[16, 20\] must have 1 <= r <= d"):
        oft.torch.householder_rotate(x, torch.randn(16, 20), apply_GS=True)
    with pytest.raises(ValueError, match=r"column"):
        oft.torch.householder_rotate(x, torch.zeros(16, 2))
    with pytest.raises(ValueError, match=r"is on meta"):
        oft.torch.householder_rotate(x.to("meta"), torch.randn(16, 2, device="meta"))
    with pytest.raises(ValueError, match=r"give exactly one of block_size and block_num"):
        oft.torch.ButterflyLinear(torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"factors 3 needs .* block_num 2"):
        oft.torch.ButterflyLinear(torch.nn.Linear(16, 4), block_size=8, factors=3)
    with pytest.raises(TypeError, match=r"base must be a torch.nn.Linear, got Conv2d"):
        oft.torch.HouseholderLinear(torch.nn.Conv2d(2, 2, 1), 2)
    core = oft._core
    with pytest.raises(ValueError, match=r"butterfly features d=10 must be a positive multiple of "
                                         r"block_size b=4"):
        core.Butterfly(10, 4, 1, core.Parameterization.cayley(), "float32")
    with pytest.raises(ValueError, match=r"not a butterfly parameterization"):
        core.Butterfly(16, 4, 1, core.Parameterization.exponential(), "float32")
    with pytest.raises(TypeError, match=r"dtype float16 is not float32, float64 or bfloat16"):
        core.Householder(16, 2, False, "float16")
    op = core.Butterfly(16, 4, 2, core.Parameterization.cayley(), "float64")
    with pytest.raises(ValueError, match=r"boft_R has shape \[8, 4\], expected \[8, 16\]"):
        op.set_peft_weight(torch.zeros(8, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"x \[3, 16\] is float32, expected float64"):
        op.apply(torch.zeros(3, 16), torch.zeros(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"X has 8 columns, expected d=16"):
        op.apply(torch.zeros(3, 8, dtype=torch.float64), torch.zeros(3, 8, dtype=torch.float64))
