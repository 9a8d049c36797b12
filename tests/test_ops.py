"""The fused GRL+BCE multi-head operator (aal_k8s.ops) against the pure-PyTorch reference.

Tests that need the compiled extension skip (with the load error as the reason) when it is not
built; CI builds it and sets AAL_K8S_REQUIRE_EXT=1 so that a silently missing extension fails
``test_extension_loads_when_the_environment_requires_it`` instead of skipping everything.
CUDA tests are marked ``cuda`` and skip without a GPU; the CUDA kernels' source is still executed
on every machine by the SIMT simulator test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aal_k8s import heads, ops

REPO = Path(__file__).resolve().parent.parent

needs_ext = pytest.mark.skipif(
    not ops.extension_available(),
    reason=f"fused extension not built: {ops.extension_error()}",
)


def cuda_test(fn):
    """Marks a test as needing a GPU (``-m cuda``) and skips it cleanly without one."""
    for mark in (
        pytest.mark.skipif(
            not ops.cuda_kernels_available(),
            reason=f"CUDA kernels not built: {ops.describe()['cuda_kernels_error']}",
        ),
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        pytest.mark.cuda,
    ):
        fn = mark(fn)
    return fn


# ---------------------------------------------------------------------------------------------
# helpers


def make_inputs(B, K, D, *, dtype=torch.float32, device="cpu", mask=False, seed=0, scale=1.0):
    """Fresh random inputs; z = h W^T + b is O(scale)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, D, generator=g, dtype=torch.float64) * scale
    W = torch.randn(K, D, generator=g, dtype=torch.float64) / max(D, 1) ** 0.5
    b = torch.randn(K, generator=g, dtype=torch.float64)
    y = (torch.rand(B, K, generator=g) > 0.5).float()
    m = (torch.rand(B, K, generator=g) > 0.3).float() if mask else None
    w = torch.rand(K, generator=g) + 0.1
    c = torch.randn(K, generator=g)
    to = dict(device=device)
    return dict(
        h=h.to(dtype=dtype, **to),
        W=W.to(dtype=dtype, **to),
        b=b.to(dtype=dtype, **to),
        y=y.to(**to),
        m=None if m is None else m.to(**to),
        w=w.to(**to),
        c=c.to(**to),
    )


def run(fn, inp, *, g_loss=None, g_logits=None, seed=1):
    """Forward + backward with upstream gradients on both outputs; returns outputs and grads."""
    # detach() keeps the strides of views (clone() would make them contiguous).
    h = inp["h"].detach().requires_grad_()
    W = inp["W"].detach().requires_grad_()
    b = inp["b"].detach().requires_grad_()
    loss, logits = fn(h, W, b, inp["y"], inp["w"], inp["c"], inp["m"])
    gen = torch.Generator().manual_seed(seed)
    if g_loss is None:
        g_loss = torch.randn(loss.shape, generator=gen, dtype=torch.float64).to(loss)
    if g_logits is None:
        g_logits = (torch.randn(logits.shape, generator=gen, dtype=torch.float64) * 0.1).to(logits)
    outs, grads = [], []
    if g_loss is not False:
        outs.append(loss)
        grads.append(g_loss)
    if g_logits is not False:
        outs.append(logits)
        grads.append(g_logits)
    dh, dW, db = torch.autograd.grad(outs, (h, W, b), grads, allow_unused=True)
    return dict(loss=loss.detach(), logits=logits.detach(), dh=dh, dW=dW, db=db)


def assert_close_scaled(actual, expected, tol, what="", atol=0.0):
    """max |a - e| <= tol * max |e| + atol: relative to the tensor's scale, so elements that are
    small after cancellation (e.g. db, a sum of +- terms) are not held to an impossible bound."""
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    if expected.numel() == 0:
        return
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = (a - e).abs().max().item()
    scale = max(e.abs().max().item(), 1e-12)
    assert err <= tol * scale + atol, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g} + {atol:g}"


def fused(h, W, b, y, w, c, m):
    return ops.fused_heads(h, W, b, y, w, c, m)


def reference(h, W, b, y, w, c, m):
    return heads.reference_head_losses(h, W, b, y, w, c, m)


# ---------------------------------------------------------------------------------------------
# build / dispatch / fallback (these run with or without the extension)


def test_extension_loads_when_the_environment_requires_it():
    if os.environ.get("AAL_K8S_REQUIRE_EXT") != "1":
        pytest.skip("AAL_K8S_REQUIRE_EXT is not 1 (CI sets it after building the extension)")
    assert ops.extension_available(), ops.extension_error()
    if os.environ.get("AAL_K8S_REQUIRE_CUDA_EXT") == "1":
        assert ops.cuda_kernels_available(), ops.describe()["cuda_kernels_error"]


def test_describe_reports_the_active_path():
    info = ops.describe()
    assert info["extension_built"] is ops.extension_available()
    assert info["cuda_kernels"] is ops.cuda_kernels_available()
    if ops.extension_available():
        assert info["active"].startswith("fused")
        assert info["extension_error"] is None
    else:
        assert info["active"].startswith("reference")
        assert info["extension_error"]


def test_missing_extension_falls_back_to_the_reference_with_a_single_warning(monkeypatch):
    monkeypatch.setattr(ops, "_ext_error", "ImportError: simulated for the test")
    monkeypatch.setattr(ops, "_warned", False)
    inp = make_inputs(9, 3, 13, mask=True)
    args = (inp["h"], inp["W"], inp["b"], inp["y"], inp["w"], inp["c"], inp["m"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss1, logits1 = heads.head_losses(*args)
        loss2, _ = heads.head_losses(*args)
    fallback = [w for w in caught if "fused head extension" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "simulated for the test" in str(fallback[0].message)
    ref_loss, ref_logits = heads.reference_head_losses(*args)
    assert torch.equal(loss1, ref_loss) and torch.equal(logits1, ref_logits)
    assert torch.equal(loss2, ref_loss)
    assert ops.describe()["active"].startswith("reference")


def test_requiring_the_fused_path_without_the_extension_raises(monkeypatch):
    monkeypatch.setattr(ops, "_ext_error", "ImportError: simulated for the test")
    inp = make_inputs(4, 2, 5)
    with pytest.raises(RuntimeError, match="not built: ImportError: simulated"):
        heads.head_losses(inp["h"], inp["W"], inp["b"], inp["y"], inp["w"], inp["c"], impl="fused")


@needs_ext
def test_auto_dispatch_uses_the_fused_operator_when_it_is_built():
    inp = make_inputs(4, 2, 5)
    h = inp["h"].requires_grad_()
    loss, _ = heads.head_losses(h, inp["W"], inp["b"], inp["y"], inp["w"], inp["c"])
    assert loss.grad_fn.name() == "_FusedHeadsFunctionBackward"
    loss_ref, _ = heads.head_losses(h, inp["W"], inp["b"], inp["y"], inp["w"], inp["c"],
                                    impl="reference")
    assert loss_ref.grad_fn.name() == "_ReferenceHeadsBackward"


# ---------------------------------------------------------------------------------------------
# correctness on CPU


@needs_ext
@pytest.mark.parametrize("mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("K", [1, 2, 40])
@pytest.mark.parametrize("D", [13, 512])
@pytest.mark.parametrize("B", [0, 1, 7, 256])
def test_fused_forward_and_all_gradients_match_the_reference(B, D, K, mask):
    inp = make_inputs(B, K, D, mask=mask, seed=B * 1000 + D * 10 + K)
    got, want = run(fused, inp), run(reference, inp)
    assert got["loss"].dtype == torch.float32 and got["logits"].dtype == torch.float32
    # Both are fp32 with different summation orders; the floor covers sums that cancel to ~0.
    for key in ("loss", "logits", "dh", "dW", "db"):
        assert_close_scaled(got[key], want[key], 2e-6, key, atol=1e-7)


@needs_ext
def test_float64_inputs_are_computed_in_float64():
    inp = make_inputs(37, 5, 29, dtype=torch.float64, mask=True, seed=3)
    got, want = run(fused, inp), run(reference, inp)
    assert got["loss"].dtype == torch.float64
    for key in ("loss", "logits", "dh", "dW", "db"):
        assert_close_scaled(got[key], want[key], 1e-13, key)


@needs_ext
def test_non_contiguous_inputs_give_the_same_results_as_contiguous_ones():
    B, K, D = 70, 6, 40
    inp = make_inputs(B, K, D, mask=True, seed=11)
    want = run(fused, inp)
    # Row-pitched views (h[:, :D], W[::2]) use the strided-row path; h[:, ::2], W^T^T and the
    # transposed label/mask/coefficient layouts exercise the copying path.
    wide = torch.randn(B, 2 * D, dtype=torch.float32)
    wide[:, :D] = inp["h"]
    inter = torch.randn(B, 2 * D, dtype=torch.float32)
    inter[:, ::2] = inp["h"]
    W_every_other = torch.randn(2 * K, D)
    W_every_other[::2] = inp["W"]
    W_transposed = inp["W"].t().contiguous().t()
    b_strided = torch.stack([inp["b"], torch.zeros(K)], 1)[:, 0]
    y_t = inp["y"].t().contiguous().t()
    m_t = inp["m"].t().contiguous().t()
    w_strided = torch.stack([inp["w"], inp["w"]], 1)[:, 0]
    for h_view, W_view in [(wide[:, :D], W_every_other[::2]), (inter[:, ::2], W_transposed)]:
        assert not h_view.is_contiguous() and not W_view.is_contiguous()
        variant = dict(inp, h=h_view, W=W_view, b=b_strided, y=y_t, m=m_t, w=w_strided)
        got = run(fused, variant)
        for key in ("loss", "logits", "dh", "dW", "db"):
            assert torch.equal(got[key], want[key]), key


@needs_ext
@pytest.mark.parametrize("upstream", ["loss-only", "logits-only"])
def test_gradients_are_right_when_only_the_loss_or_only_the_logits_are_used(upstream):
    inp = make_inputs(50, 4, 33, mask=True, seed=5)
    kw = dict(g_logits=False) if upstream == "loss-only" else dict(g_loss=False)
    got, want = run(fused, inp, **kw), run(reference, inp, **kw)
    for key in ("dh", "dW", "db"):
        assert_close_scaled(got[key], want[key], 2e-6, key, atol=1e-7)


@needs_ext
def test_the_eager_wrapper_and_the_registered_autograd_formula_agree_bitwise():
    inp = make_inputs(80, 5, 37, mask=True, seed=4)

    def via_dispatcher(h, W, b, y, w, c, m):
        loss, logits, _, _ = torch.ops.aal_k8s.fused_heads.default(h, W, b, y, w, c, m)
        return loss, logits

    got, want = run(fused, inp), run(via_dispatcher, inp)
    for key in ("loss", "logits", "dh", "dW", "db"):
        assert torch.equal(got[key], want[key]), key


@needs_ext
def test_labels_and_mask_may_be_bool_or_half():
    inp = make_inputs(20, 3, 9, mask=True, seed=6)
    want = run(fused, inp)
    got = run(fused, dict(inp, y=inp["y"].bool(), m=inp["m"].half()))
    for key in ("loss", "logits", "dh", "dW", "db"):
        assert torch.equal(got[key], want[key]), key


@needs_ext
def test_backward_is_the_true_gradient_in_float64_when_w_and_c_are_one():
    # With w = c = 1 the op is an ordinary differentiable function of (h, W, b), so autograd's
    # finite-difference check applies to both outputs directly.
    for mask in (False, True):
        inp = make_inputs(6, 3, 5, dtype=torch.float64, mask=mask, seed=7)
        ones = torch.ones(3, dtype=torch.float64)

        def f(h, W, b):
            return ops.fused_heads(h, W, b, inp["y"], ones, ones, inp["m"])

        args = tuple(inp[k].clone().requires_grad_() for k in ("h", "W", "b"))
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def _numerical_grad(fn, x, eps=1e-6):
    """Central differences of scalar fn() w.r.t. every element of x (float64)."""
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        orig = flat[i].item()
        flat[i] = orig + eps
        fp = fn()
        flat[i] = orig - eps
        fm = fn()
        flat[i] = orig
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


@needs_ext
@pytest.mark.parametrize("mask", [False, True], ids=["nomask", "mask"])
def test_parameter_gradients_follow_w_and_only_the_feature_gradient_follows_c(mask):
    """dW, db = grad of sum_k g_k w_k loss_k; dh = grad of sum_k g_k c_k loss_k (finite diffs)."""
    B, K, D = 5, 4, 3
    inp = make_inputs(B, K, D, dtype=torch.float64, mask=mask, seed=8)
    w = inp["w"].double()
    c = torch.tensor([0.5, -0.25, 0.125, -1.5], dtype=torch.float64)  # both signs: GRL heads
    g = torch.tensor([1.0, 0.5, -2.0, 1.5], dtype=torch.float64)
    h, W, b = (inp[k].clone() for k in ("h", "W", "b"))

    def objective(coef):
        return lambda: (g * coef * heads.reference_head_losses(
            h, W, b, inp["y"], w, c, inp["m"])[0]).sum().item()

    got = run(lambda *a: ops.fused_heads(a[0], a[1], a[2], a[3], w, c, a[6]), inp,
              g_loss=g, g_logits=False)
    assert_close_scaled(got["dh"], _numerical_grad(objective(c), h), 1e-7, "dh vs c")
    assert_close_scaled(got["dW"], _numerical_grad(objective(w), W), 1e-7, "dW vs w")
    assert_close_scaled(got["db"], _numerical_grad(objective(w), b), 1e-7, "db vs w")


@needs_ext
def test_negating_c_flips_the_feature_gradient_and_leaves_the_head_gradients_unchanged():
    inp = make_inputs(64, 6, 20, mask=True, seed=9)
    pos = run(fused, inp, g_logits=False)
    neg = run(fused, dict(inp, c=-inp["c"]), g_logits=False)
    assert torch.equal(neg["dh"], -pos["dh"])
    assert torch.equal(neg["dW"], pos["dW"]) and torch.equal(neg["db"], pos["db"])
    assert torch.equal(neg["loss"], pos["loss"])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_match_the_float32_reference_within_stated_tolerances(dtype):
    """Tolerances: the op accumulates in fp32, so the fp32 loss matches the fp32 reference (run on
    the same, already rounded inputs) to 1e-5 relative; logits and gradients are returned in the
    input dtype, so they carry one rounding of that dtype: 2^-8 relative for bfloat16, 2^-11 for
    float16 (of the largest magnitude, plus fp32 noise)."""
    inp = make_inputs(96, 7, 67, dtype=dtype, mask=True, seed=10)
    G = (torch.randn(96, 7, generator=torch.Generator().manual_seed(3)) * 0.1).to(dtype)
    got = run(fused, inp, g_logits=G)
    as32 = dict(inp, h=inp["h"].float(), W=inp["W"].float(), b=inp["b"].float())
    want = run(reference, as32, g_logits=G.float())  # the same (rounded) upstream gradient
    assert got["loss"].dtype == torch.float32
    assert got["logits"].dtype == dtype and got["dh"].dtype == dtype and got["dW"].dtype == dtype
    assert_close_scaled(got["loss"], want["loss"], 1e-5, "loss")
    rounding = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    for key in ("logits", "dh", "dW", "db"):
        assert_close_scaled(got[key], want[key], rounding + 1e-5, key)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_extreme_logits_give_finite_exact_losses_and_gradients(dtype):
    # z = h . W + b with h one-hot: z takes the values below exactly (representable in bfloat16).
    zs = torch.tensor([100.0, -100.0, 1000.0, -1000.0, 30000.0, -30000.0, 0.0, 88.0])
    B, K = zs.numel(), 2
    h = torch.eye(B, dtype=dtype)
    W = torch.stack([zs, zs]).to(dtype)  # head 0 and head 1 see the same logits ...
    b = torch.zeros(K, dtype=dtype)
    y = torch.stack([torch.zeros(B), torch.ones(B)], 1)  # ... with opposite labels
    w = c = torch.ones(K)
    inp = dict(h=h, W=W, b=b, y=y, m=None, w=w, c=c)
    got = run(fused, inp, g_loss=torch.ones(K).to(torch.promote_types(dtype, torch.float32)),
              g_logits=False)
    z64 = W[0].double()  # the logits as representable in dtype (30000 is not, in bfloat16)
    assert z64.abs().min() == 0 and (z64.abs() >= 100).sum() == 6
    want_loss = torch.stack([F.binary_cross_entropy_with_logits(z64, y[:, k].double())
                             for k in range(K)])
    want_dz = (torch.sigmoid(z64)[:, None] - y.double()) / B
    assert_close_scaled(got["logits"].double(), torch.stack([z64, z64], 1), 0.0, "logits")
    for key in ("loss", "logits", "dh", "dW", "db"):
        assert torch.isfinite(got[key]).all(), key
    assert_close_scaled(got["loss"], want_loss, 1e-6, "loss")
    assert_close_scaled(got["db"], want_dz.sum(0), 1e-6, "db")
    assert_close_scaled(got["dh"].double(), want_dz @ W.double(), 1e-6 if dtype != torch.bfloat16
                        else 2.0**-8, "dh")


@needs_ext
def test_results_are_bitwise_reproducible_and_independent_of_the_thread_count():
    inp = make_inputs(1000, 40, 130, mask=True, seed=12)
    threads = torch.get_num_threads()
    try:
        first = run(fused, inp)
        second = run(fused, inp)
        torch.set_num_threads(1)
        single = run(fused, inp)
    finally:
        torch.set_num_threads(threads)
    for key in first:
        assert torch.equal(first[key], second[key]), key
        assert torch.equal(first[key], single[key]), key


_ISA_CHECK = """
import sys, torch
sys.path.insert(0, "tests")
import test_ops as t
assert torch.backends.cpu.get_cpu_capability() == sys.argv[1].upper(), \\
    torch.backends.cpu.get_cpu_capability()
for B, K, D, mask in [(7, 1, 13, False), (70, 40, 200, True), (33, 3, 512, True)]:
    inp = t.make_inputs(B, K, D, mask=mask, seed=B + K)
    got, want = t.run(t.fused, inp), t.run(t.reference, inp)
    for key in ("loss", "logits", "dh", "dW", "db"):
        t.assert_close_scaled(got[key], want[key], 2e-6, key, atol=1e-7)
    inp = t.make_inputs(B, K, D, dtype=torch.float64, mask=mask, seed=B + K)
    got, want = t.run(t.fused, inp), t.run(t.reference, inp)
    for key in ("loss", "logits", "dh", "dW", "db"):
        t.assert_close_scaled(got[key], want[key], 1e-13, key)
print("ok")
"""


@needs_ext
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_each_cpu_isa_path_matches_the_reference(capability):
    """The kernels are compiled per ISA and chosen like torch's own (ATEN_CPU_CAPABILITY); the
    machine's best path runs in every other test, the lower ones here in a subprocess."""
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    res = subprocess.run([sys.executable, "-c", _ISA_CHECK, capability], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


@needs_ext
def test_bad_shapes_and_dtypes_are_rejected_with_a_clear_message():
    inp = make_inputs(4, 3, 5)
    base = (inp["h"], inp["W"], inp["b"], inp["y"], inp["w"], inp["c"], None)
    with pytest.raises(RuntimeError, match="weight is"):
        ops.fused_heads(inp["h"], inp["W"][:, :4], *base[2:])
    with pytest.raises(RuntimeError, match="labels must be"):
        ops.fused_heads(*base[:3], inp["y"][:, :2], *base[4:])
    with pytest.raises(RuntimeError, match="share a dtype"):
        ops.fused_heads(inp["h"].double(), *base[1:])
    with pytest.raises(RuntimeError, match="mask must be"):
        ops.fused_heads(*base[:6], torch.ones(4, 2))


def _backward_args(B=6, K=3, D=5, **change):
    """Valid arguments of ``fused_heads_backward`` (from a real forward), some replaced."""
    inp = make_inputs(B, K, D, mask=True, seed=21)
    with torch.no_grad():
        loss, logits, resid, count = torch.ops.aal_k8s.fused_heads.default(
            inp["h"], inp["W"], inp["b"], inp["y"], inp["w"], inp["c"], inp["m"])
    args = dict(grad_loss=torch.ones_like(loss), grad_logits=torch.ones_like(logits), residual=resid,
                count=count, h=inp["h"], weight=inp["W"], loss_w=inp["w"], feat_c=inp["c"])
    args.update(change)
    return tuple(args.values())


@needs_ext
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int32, torch.int64, torch.complex64], ids=str)
def test_backward_refuses_a_feature_dtype_its_kernels_cannot_read(dtype):
    # int/complex h used to be read as garbage; uint8/bool h as float, past the end of its buffer
    # (the process aborted), so those run in a child process: a regression fails this test only
    message = "fused_heads_backward: h must be float16, bfloat16, float32 or float64"
    if dtype in (torch.uint8, torch.bool):
        code = ("import sys, torch; sys.path.insert(0, 'tests'); from test_ops import _backward_args\n"
                f"h = torch.ones(6, 5, dtype={dtype})\n"
                "try: torch.ops.aal_k8s.fused_heads_backward.default(*_backward_args(h=h))\n"
                "except RuntimeError as e: print(str(e).splitlines()[0])")  # fmt: skip
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and message in res.stdout, res.stdout + res.stderr[-2000:]
        return
    with pytest.raises(RuntimeError, match=message):
        torch.ops.aal_k8s.fused_heads_backward.default(*_backward_args(h=torch.ones(6, 5, dtype=dtype)))


@needs_ext
@pytest.mark.parametrize("which", ["grad_loss", "grad_logits"])
def test_backward_refuses_upstream_gradients_that_are_not_floating_point(which):
    good = dict(zip(("grad_loss", "grad_logits"), _backward_args()[:2]))
    bad = {which: good[which].to(torch.complex64)}
    with pytest.raises(RuntimeError, match=f"fused_heads_backward: {which} must be floating point"):
        torch.ops.aal_k8s.fused_heads_backward.default(*_backward_args(**bad))


@needs_ext
@pytest.mark.parametrize("name", ["weight", "bias", "labels", "loss_w", "feat_c", "mask"])
def test_forward_refuses_an_input_on_another_device_than_h(name):
    # a meta tensor among CPU ones dispatches to the fake kernel, which used to return
    # uninitialised CPU tensors
    inp = make_inputs(4, 3, 5, mask=True)
    args = dict(h=inp["h"], weight=inp["W"], bias=inp["b"], labels=inp["y"], loss_w=inp["w"],
                feat_c=inp["c"], mask=inp["m"])
    args[name] = args[name].to("meta")
    with pytest.raises(RuntimeError, match=f"fused_heads: {name} is on meta but h is on cpu"):
        torch.ops.aal_k8s.fused_heads.default(*args.values())


@needs_ext
@pytest.mark.parametrize("name", ["grad_loss", "grad_logits", "residual", "count", "weight", "loss_w", "feat_c"])
def test_backward_refuses_an_input_on_another_device_than_h(name):
    names = ("grad_loss", "grad_logits", "residual", "count", "h", "weight", "loss_w", "feat_c")
    args = dict(zip(names, _backward_args()))
    args[name] = args[name].to("meta")
    with pytest.raises(RuntimeError, match=f"fused_heads_backward: {name} is on meta but h is on cpu"):
        torch.ops.aal_k8s.fused_heads_backward.default(*args.values())


@needs_ext
def test_all_meta_inputs_still_give_meta_outputs_of_the_right_shapes():
    inp = make_inputs(4, 3, 5, mask=True, device="meta")
    loss, logits, resid, count = torch.ops.aal_k8s.fused_heads.default(
        inp["h"], inp["W"], inp["b"], inp["y"], inp["w"], inp["c"], inp["m"])
    assert [t.device.type for t in (loss, logits, resid, count)] == ["meta"] * 4
    assert (loss.shape, logits.shape, resid.shape, count.shape) == ((3,), (4, 3), (4, 3), (3,))


@needs_ext
@pytest.mark.parametrize("path", ["eager wrapper", "registered formula"])
def test_double_backward_raises_instead_of_returning_no_gradient(path):
    inp = make_inputs(8, 3, 5, mask=True, seed=22)
    h, W = inp["h"].clone().requires_grad_(), inp["W"].clone().requires_grad_()
    args = (h, W, inp["b"], inp["y"], inp["w"], inp["c"], inp["m"])
    if path == "eager wrapper":
        loss, _ = ops.fused_heads(*args)
    else:
        loss = torch.ops.aal_k8s.fused_heads.default(*args)[0]
    dh, dW = torch.autograd.grad(loss.sum(), (h, W), create_graph=True)
    for g in (dh, dW):  # allow_unused: the old behaviour was a warning and None, not an error
        with pytest.raises(RuntimeError, match="fused_heads is differentiable once"):
            torch.autograd.grad(g.square().sum(), (h, W), allow_unused=True)


def _nan_in_masked_out_elements(impl, device):
    B, K, D = 40, 3, 9
    inp = make_inputs(B, K, D, mask=True, seed=23, device=device)
    inp["m"][5, 1] = 0.0
    inp["m"][7, :] = 0.0
    poisoned = dict(inp, y=inp["y"].clone(), h=inp["h"].clone())
    poisoned["y"][5, 1] = float("nan")
    poisoned["h"][7, :] = float("nan")
    got, want = run(impl, poisoned, g_logits=False), run(impl, inp, g_logits=False)
    # masked-out elements are not part of the maths at all: same loss and feature gradient
    assert torch.equal(got["loss"], want["loss"])
    keep = torch.arange(B, device=device) != 7
    assert torch.equal(got["dh"][keep], want["dh"][keep]) and not got["dh"][7].any()
    assert torch.equal(got["db"], want["db"])  # (dW still meets the NaN row: see aal_k8s.heads)


@pytest.mark.parametrize("impl", [
    pytest.param(fused, marks=needs_ext, id="fused"),
    pytest.param(reference, id="reference"),
])  # fmt: skip
def test_a_nan_in_a_masked_out_label_or_feature_row_leaves_loss_and_feature_gradient_finite(impl):
    _nan_in_masked_out_elements(impl, "cpu")


@cuda_test
def test_a_nan_in_a_masked_out_label_or_feature_row_leaves_loss_and_feature_gradient_finite_on_cuda():
    _nan_in_masked_out_elements(fused, "cuda")


@needs_ext
def test_autocast_runs_the_heads_in_the_autocast_dtype_and_keeps_the_loss_in_float32():
    inp = make_inputs(32, 4, 16, mask=True, seed=13)
    W = inp["W"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = ops.fused_heads(inp["h"], W, inp["b"], inp["y"], inp["w"], inp["c"],
                                       inp["m"])
    assert loss.dtype == torch.float32 and logits.dtype == torch.bfloat16
    bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
    want_loss, want_logits = ops.fused_heads(bf(inp["h"]), bf(inp["W"]), bf(inp["b"]), inp["y"],
                                             inp["w"], inp["c"], inp["m"])
    assert torch.equal(loss, want_loss) and torch.equal(logits, want_logits)
    loss.sum().backward()
    assert W.grad is not None and W.grad.dtype == torch.float32  # flows back through the cast


# ---------------------------------------------------------------------------------------------
# PyTorch integration: opcheck, torch.compile


def _op_args(B=9, K=3, D=7, mask=True, device="cpu", dtype=torch.float32, requires_grad=True):
    inp = make_inputs(B, K, D, mask=mask, device=device, dtype=dtype, seed=14)
    return (
        inp["h"].requires_grad_(requires_grad),
        inp["W"].requires_grad_(requires_grad),
        inp["b"].requires_grad_(requires_grad),
        inp["y"],
        inp["w"],
        inp["c"],
        inp["m"],
    )


def _opcheck_both(device):
    for mask in (False, True):
        for B in (0, 9):
            args = _op_args(B=B, mask=mask, device=device)
            torch.library.opcheck(torch.ops.aal_k8s.fused_heads.default, args)
            with torch.no_grad():
                loss, logits, resid, count = torch.ops.aal_k8s.fused_heads.default(*args)
            h, W = args[0].detach(), args[1].detach()
            g = torch.randn_like(loss)
            G = torch.randn_like(logits)
            expanded = torch.ones(1, device=device).expand(3)  # stride 0, as from loss.sum()
            for gl, gz in ((g, G), (g, None), (None, G), (expanded, None)):
                torch.library.opcheck(
                    torch.ops.aal_k8s.fused_heads_backward.default,
                    (gl, gz, resid, count, h, W, args[4], args[5]),
                )


@needs_ext
def test_opcheck_passes_for_the_forward_and_backward_operators():
    _opcheck_both("cpu")


@needs_ext
def test_the_op_compiles_with_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    inp = make_inputs(64, 5, 24, mask=True, seed=15)

    def step(h, W, b):
        loss, logits = ops.fused_heads(h, W, b, inp["y"], inp["w"], inp["c"], inp["m"])
        return loss.sum() + 0.01 * logits.square().mean()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        args = [inp[k].clone().requires_grad_() for k in ("h", "W", "b")]
        out = fn(*args)
        out.backward()
        results.append([out.detach(), *(a.grad for a in args)])
    for got, want in zip(results[1], results[0]):
        assert_close_scaled(got, want, 1e-6)


# ---------------------------------------------------------------------------------------------
# CUDA: run on a GPU when there is one; the kernel source itself is simulated below regardless


def _simulator_binary(tmp_path, defines=()):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the SIMT simulator")
    exe = tmp_path / ("simt" + "".join(d.replace("=", "_") for d in defines))
    cmd = [cxx, "-std=c++17", "-O1", f"-I{REPO / 'csrc'}", *(f"-D{d}" for d in defines),
           str(REPO / "tests" / "cuda_sim" / "run_kernels.cpp"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.mark.parametrize("caps", [(), ("AAL_CUDA_MAX_ROW_BLOCKS=2", "AAL_CUDA_MAX_SPLITS=2")],
                         ids=["default-grid", "capped-grid"])
def test_cuda_kernels_match_float64_maths_in_the_cpu_simt_simulator(tmp_path, caps):
    """The .cuh kernels compiled for the CPU simulator: all outputs vs float64 maths, and bitwise
    equality under reversed/shuffled block orders (the capped grid forces grid-stride loops and
    multi-chunk splits)."""
    exe = _simulator_binary(tmp_path, caps)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout + res.stderr


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("B,K,D", [(0, 2, 13), (1, 1, 13), (7, 2, 512), (256, 40, 13),
                                   (4096, 40, 512), (300, 33, 129)])
@pytest.mark.parametrize("mask", [False, True], ids=["nomask", "mask"])
def test_cuda_results_match_the_reference_and_are_reproducible(B, K, D, dtype, mask):
    inp = make_inputs(B, K, D, dtype=dtype, device="cuda", mask=mask, seed=B + K + D)
    G = (torch.randn(B, K, generator=torch.Generator().manual_seed(3)) * 0.1).to(dtype).cuda()
    got = run(fused, inp, g_logits=G)
    acc = torch.promote_types(dtype, torch.float32)
    as32 = dict(inp, **{k: inp[k].to(acc) for k in ("h", "W", "b")})
    want = run(reference, as32, g_logits=G.to(acc))
    rounding = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(dtype, 0.0)
    tol = {torch.float64: 1e-12}.get(dtype, 1e-5)
    assert_close_scaled(got["loss"], want["loss"], tol, "loss")
    for key in ("logits", "dh", "dW", "db"):
        assert_close_scaled(got[key], want[key], rounding + tol, key)
    again = run(fused, inp, g_logits=G)
    for key in got:
        assert torch.equal(got[key], again[key]), f"{key} not reproducible"


@cuda_test
def test_opcheck_passes_on_cuda():
    _opcheck_both("cuda")


@cuda_test
def test_forward_and_backward_can_be_captured_in_a_cuda_graph():
    inp = make_inputs(256, 40, 512, device="cuda", mask=True, seed=16)
    h, W, b = (inp[k].clone().requires_grad_() for k in ("h", "W", "b"))

    def step():
        loss, _ = ops.fused_heads(h, W, b, inp["y"], inp["w"], inp["c"], inp["m"])
        return torch.autograd.grad(loss.sum(), (h, W, b))

    eager = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        assert torch.equal(got, want)


@cuda_test
def test_a_reduce_overhead_fullgraph_compiled_training_step_matches_eager():
    torch._dynamo.reset()
    B, K, D = 128, 6, 64
    inp = make_inputs(B, K, D, device="cuda", mask=True, seed=17)
    x = torch.randn(B, 32, device="cuda")

    def build():
        torch.manual_seed(0)
        trunk = torch.nn.Linear(32, D).cuda()
        W = torch.nn.Parameter(inp["W"].clone())
        b = torch.nn.Parameter(inp["b"].clone())
        return trunk, W, b, torch.optim.SGD([*trunk.parameters(), W, b], lr=0.1)

    def forward(trunk, W, b):
        h = torch.relu(trunk(x))
        loss, _ = ops.fused_heads(h, W, b, inp["y"], inp["w"], inp["c"], inp["m"])
        return loss.sum()

    final = []
    for compile_it in (False, True):
        trunk, W, b, opt = build()
        fwd = torch.compile(forward, mode="reduce-overhead", fullgraph=True) if compile_it \
            else forward
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            loss = fwd(trunk, W, b)
            loss.backward()
            opt.step()
        final.append([p.detach().clone() for p in (*trunk.parameters(), W, b)])
    for got, want in zip(final[1], final[0]):
        assert_close_scaled(got, want, 1e-5, "parameters after 5 steps")


# ---------------------------------------------------------------------------------------------
# the trainer


@needs_ext
def test_adversarial_training_gives_the_same_results_with_the_fused_op_and_the_reference(
    tiny_overrides,
):
    from aal_k8s.config import load_config
    from aal_k8s.data import load_dataset
    from aal_k8s.planner import plan_stage
    from aal_k8s.train import train_run

    runs = {}
    for impl in ("reference", "fused"):
        cfg = load_config(overrides=[*tiny_overrides, f"train.heads_impl={impl}"],
                          dataset="synthetic")
        spec = plan_stage("adversarial", cfg, {"square": "red_tint"})[0]
        assert spec.mode == "adversarial" and spec.lam > 0
        runs[impl] = train_run(spec, load_dataset(cfg.dataset))
    ref, fus = runs["reference"], runs["fused"]
    # fp32 with different summation orders, amplified by six Adam steps: the weights agree to
    # ~5e-5 of their scale here. Dropping the reversal (c -> |c|) moves them by 1e-2 or more.
    for r_epoch, f_epoch in zip(ref.history, fus.history):
        for head, value in r_epoch["train_loss"].items():
            assert abs(f_epoch["train_loss"][head] - value) <= 1e-5 * max(1.0, abs(value)), head
    for key, want in ref.state_dict.items():
        assert_close_scaled(fus.state_dict[key], want, 5e-4, key)
    assert fus.best_epoch == ref.best_epoch
    for head in ref.val_acc:  # 64 validation/test images: allow one flipped borderline image
        assert abs(fus.val_acc[head] - ref.val_acc[head]) <= 1 / 64 + 1e-9, head
        assert abs(fus.test_acc[head] - ref.test_acc[head]) <= 1 / 64 + 1e-9, head
