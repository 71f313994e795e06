"""The optional oneDNN convolution kernel (jaxnet.ops.onednn, the `cpu-fast` extra) and its fallback.

With the kernel: the manual conv's forward, dX, dW and db (oneDNN's forward, backward-data and
backward-weights custom calls) against the reference conv2d (XLA, autodiff) in float32, at the
benchmark net's shapes and at odd ones, under jit and vmap, and the fused bias + ReLU; float64
takes XLA's convolution and matches to 1e-12.  Without it (simulated: the loader's state reset,
JAXNET_ONEDNN=0, a missing oneDNN, a failed build): XLA's results and exactly one message; the
build's one-line errors (no compiler, a compile error).  Both convolution algorithms (oneDNN's
Winograd F(4x4, 3x3) where jaxnet asks for it, the direct kernel) against the reference, which
kernel each shape gets, and the algorithm switch's bad values.
"""
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.ops import conv, onednn
from jaxnet.ops.onednn import build as B

TARGETS = ("jaxnet_onednn_conv_fwd", "jaxnet_onednn_conv_bwd_data", "jaxnet_onednn_conv_bwd_weights")

# (x shape, w shape, stride, padding, bias): the benchmark net's three convolutions (batch 8, not 128),
# then stride 2 with asymmetric padding, 1x1, 5x5 stride 2, a non-square kernel on a non-square
# input without bias, SAME with stride 2 on odd sizes (a row and a column no window reaches), batch 1.
CASES = (
    ((8, 32, 32, 3), (3, 3, 3, 32), 1, 1, True),
    ((8, 16, 16, 32), (3, 3, 32, 64), 1, 1, True),
    ((8, 8, 8, 64), (3, 3, 64, 128), 1, 1, True),
    ((2, 10, 8, 5), (3, 3, 5, 6), 2, ((1, 0), (2, 1)), True),
    ((3, 6, 6, 7), (1, 1, 7, 4), 1, 0, True),
    ((2, 11, 11, 3), (5, 5, 3, 8), 2, 2, True),
    ((2, 7, 9, 4), (2, 3, 4, 5), (1, 2), ((1, 0), (0, 0)), False),
    ((2, 9, 7, 3), (3, 3, 3, 4), 2, "SAME", True),
    ((1, 5, 5, 2), (3, 3, 2, 3), 1, "VALID", True),
)


def _inputs(dtype, cases=CASES):
    rng = np.random.default_rng(0)
    out = []
    for xs, ws, stride, padding, bias in cases:
        fan_in = ws[0] * ws[1] * ws[2]
        x = rng.standard_normal(xs).astype(dtype)
        w = (rng.standard_normal(ws) / np.sqrt(fan_in)).astype(dtype)
        b = rng.standard_normal(ws[3]).astype(dtype) if bias else None
        out.append((x, w, b, dict(stride=stride, padding=padding)))
    return out


def _value_and_grads(f, x, w, b, kw):
    """y and (dx, dw[, db]) of sum(y * ct), the cotangent ct = cos(flat index) (fixed, not uniform)."""
    def loss(x, w, b):
        y = f(x, w, b, **kw)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))), y
    (_, y), g = jax.value_and_grad(loss, argnums=(0, 1, 2) if b is not None else (0, 1), has_aux=True)(x, w, b)
    return y, g


def _both(inputs):
    """For every case: the manual conv's and the reference's y, dx, dw(, db), in one jitted program."""
    def run(args):
        return [(_value_and_grads(conv.conv2d_manual, x, w, b, kw), _value_and_grads(conv.conv2d, x, w, b, kw))
                for (x, w, b), (_, _, _, kw) in zip(args, inputs)]
    f = jax.jit(run)
    args = [(x, w, b) for x, w, b, _ in inputs]
    return f(args), f.lower(args).as_text()


def _rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def test_manual_conv_on_onednn_matches_the_reference_float32(onednn_kernel):
    inputs = _inputs(np.float32)
    results, hlo = _both(inputs)
    pairs = hlo.count("jaxnet_onednn_conv_bwd_winograd")    # Winograd pairs: one backward call for dX and dW
    for t in TARGETS:                       # the manual path really ran oneDNN's three convolutions
        assert hlo.count(t) + (pairs if "bwd" in t else 0) >= len(CASES), t
    for (xs, ws, stride, padding, bias), ((y, g), (y_ref, g_ref)) in zip(CASES, results):
        case = f"x {xs} w {ws} stride {stride} padding {padding} bias {bias}"
        assert y.shape == y_ref.shape, case
        assert _rel_err(y, y_ref) < 1e-4, case
        assert len(g) == len(g_ref) == (3 if bias else 2)
        for name, a, r in zip(("dx", "dw", "db"), g, g_ref):
            assert a.shape == r.shape and a.dtype == jnp.float32, (case, name)
            assert _rel_err(a, r) < 1e-4, (case, name, _rel_err(a, r))


def test_onednn_under_vmap_matches_the_reference(onednn_kernel):
    """vmap of the custom calls (``vmap_method="sequential"``): a batch of examples and a batch of filters."""
    (x, w, b, kw), = _inputs(np.float32, (((2, 10, 8, 5), (3, 3, 5, 6), 2, ((1, 0), (2, 1)), True),))
    xs, ws = np.stack([x, 2 * x, -x]), np.stack([w, -w, 0.5 * w])

    def grads(f):
        return jax.jit(jax.vmap(lambda x, w: _value_and_grads(f, x, w, b, kw)))
    got, want = grads(conv.conv2d_manual)(xs, ws), grads(conv.conv2d)(xs, ws)
    assert "jaxnet_onednn_conv_bwd_weights" in grads(conv.conv2d_manual).lower(xs, ws).as_text()
    for a, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == r.shape and a.shape[0] == 3
        assert _rel_err(a, r) < 1e-4


def test_fused_bias_relu_forward(onednn_kernel):
    (x, w, b, _), = _inputs(np.float32, (((4, 9, 7, 3), (3, 3, 3, 6), 1, 1, True),))
    pads = ((1, 1), (1, 1))

    @jax.jit
    def run(x, w, b):
        ref = jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (onednn.conv_fwd(x, w, b, (1, 1), pads, relu=True), jnp.maximum(ref + b, 0),
                onednn.conv_fwd(x, w, None, (1, 1), pads, relu=True), jnp.maximum(ref, 0))
    fused, want, fused_nb, want_nb = run(x, w, b)
    assert fused.shape == want.shape == (4, 9, 7, 6)
    assert _rel_err(fused, want) < 1e-5 and _rel_err(fused_nb, want_nb) < 1e-5
    assert 0 < float(jnp.mean(fused == 0)) < 1          # the ReLU clipped some outputs, not all


# Winograd-eligible shapes (3x3, stride 1, padding 1, channels multiples of 16, at least 32 in): the
# race net's block-2 conv1 (batch 4), odd H and W (part tiles) with a fused bias, the 128-channel 4x4 one.
WINO_CASES = (
    ((4, 16, 16, 32), (3, 3, 32, 64), 1, 1, False),
    ((2, 6, 5, 32), (3, 3, 32, 16), 1, "SAME", True),
    ((3, 4, 4, 128), (3, 3, 128, 128), 1, 1, False),
)


def _has_avx512_core():
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


@pytest.mark.parametrize("algorithm", onednn.ALGORITHMS)
def test_both_conv_algorithms_match_the_reference_float32(onednn_kernel, algorithm):
    inputs = _inputs(np.float32, WINO_CASES)
    with onednn.use_algorithm(algorithm):           # traced inside the block: its custom calls ask for it
        assert onednn.conv_algorithm() == algorithm
        results, hlo = _both(inputs)
        pairs = [onednn.winograd_pair(xs, ws, (1, 1), ((1, 1), (1, 1))) for xs, ws, *_ in WINO_CASES]
    if algorithm == "direct":
        assert not any(pairs) and "winograd" not in hlo and "wino = 1 : i64" not in hlo
        assert hlo.count("wino = 0 : i64") >= 3 * len(WINO_CASES)
    else:   # AVX-512: every layer a Winograd pair (forward + one backward call); elsewhere the direct calls
        assert pairs == [_has_avx512_core()] * len(WINO_CASES)
        if all(pairs):
            assert hlo.count("jaxnet_onednn_conv_fwd_winograd") == hlo.count("jaxnet_onednn_conv_bwd_winograd") \
                == len(WINO_CASES)
        else:
            assert hlo.count("wino = 1 : i64") >= 3 * len(WINO_CASES)
    for (xs, ws, stride, padding, bias), ((y, g), (y_ref, g_ref)) in zip(WINO_CASES, results):
        case = f"{algorithm}: x {xs} w {ws} padding {padding} bias {bias}"
        assert _rel_err(y, y_ref) < 1e-4, case
        for name, a, r in zip(("dx", "dw", "db"), g, g_ref):
            assert a.shape == r.shape and a.dtype == jnp.float32, (case, name)
            assert _rel_err(a, r) < 1e-4, (case, name, _rel_err(a, r))


def test_winograd_is_a_different_kernel_with_the_same_results(onednn_kernel):
    """Where oneDNN has Winograd (AVX-512) the two algorithms' outputs differ in the last bits (a
    different kernel really ran) and agree to float32 rounding; elsewhere jaxnet falls back to the
    direct kernel and the bits are equal."""
    (x, w, b, kw), = _inputs(np.float32, WINO_CASES[:1])
    pads = ((1, 1), (1, 1))
    out = {}
    for algorithm in onednn.ALGORITHMS:
        with onednn.use_algorithm(algorithm):
            out[algorithm] = jax.jit(lambda x, w, dy: (onednn.conv_fwd(x, w, None, (1, 1), pads),
                                                       onednn.conv_bwd_data(dy, w, x.shape, (1, 1), pads),
                                                       onednn.conv_bwd_weights(x, dy, w.shape, (1, 1), pads)[0]))(
                x, w, np.cos(np.arange(4 * 16 * 16 * 64, dtype=np.float32)).reshape(4, 16, 16, 64))
    wino = onednn.conv_implementation(x.shape, w.shape, (1, 1), pads, algorithm="winograd")
    if _has_avx512_core():
        assert wino.startswith("jit_wino"), wino
    for a, r in zip(out["winograd"], out["direct"]):
        assert _rel_err(a, r) < 1e-5
        assert (not np.array_equal(a, r)) if wino.startswith("jit_wino") else np.array_equal(a, r)


def test_winograd_pair_equals_the_three_separate_winograd_calls(onednn_kernel):
    """conv_fwd_winograd + conv_bwd_winograd (x kept in oneDNN's layout, dy reordered once) give the
    same bits as the three separate Winograd calls, with and without a bias."""
    pads = ((1, 1), (1, 1))
    for (x, w, b, _) in _inputs(np.float32, WINO_CASES[1:]):
        if not onednn.winograd_pair(x.shape, w.shape, (1, 1), pads):
            assert not _has_avx512_core()
            continue
        dy = np.cos(np.arange(x.shape[0] * x.shape[1] * x.shape[2] * w.shape[3], dtype=np.float32)).reshape(
            x.shape[:3] + (w.shape[3],))

        @jax.jit
        def run(x, w, b, dy):
            y, xb = onednn.conv_fwd_winograd(x, w, b, (1, 1), pads)
            pair = (y,) + onednn.conv_bwd_winograd(xb, dy, w, x.shape, (1, 1), pads, bias=b is not None)
            dw, db = onednn.conv_bwd_weights(x, dy, w.shape, (1, 1), pads, bias=b is not None)
            return pair, (onednn.conv_fwd(x, w, b, (1, 1), pads), onednn.conv_bwd_data(dy, w, x.shape, (1, 1), pads),
                          dw, db), xb
        with onednn.use_algorithm("winograd"):
            pair, separate, xb = run(x, w, b, dy)
        assert xb.shape == (x.size,) and sorted(np.asarray(xb).ravel().tolist()) == sorted(x.ravel().tolist())
        assert len(pair) == len(separate) == 4
        assert (pair[3] is None) == (separate[3] is None) == (b is None)     # db only with a bias
        for a, r in zip(pair, separate):
            if a is not None:
                assert a.shape == r.shape and np.array_equal(a, r)


def test_which_convolutions_get_winograd(onednn_kernel):
    """Winograd only for 3x3, stride 1, padding 1, channels multiples of 16 and at least 32 in; the
    direct kernel for every other shape, and for every shape under "direct"."""
    same = ((1, 1), (1, 1))
    eligible = ((2, 8, 8, 32), (3, 3, 32, 16), (1, 1), same)
    others = (((2, 8, 8, 16), (3, 3, 16, 32), (1, 1), same),           # 16 input channels
              ((2, 8, 8, 32), (3, 3, 32, 24), (1, 1), same),           # 24 outputs: not a multiple of 16
              ((2, 8, 8, 32), (3, 3, 32, 32), (2, 2), same),           # stride 2
              ((2, 8, 8, 32), (5, 5, 32, 32), (1, 1), ((2, 2), (2, 2))),  # 5x5
              ((2, 8, 8, 32), (3, 3, 32, 32), (1, 1), ((0, 0), (0, 0))))  # no padding
    for kind in onednn.CONV_KINDS:
        name = onednn.conv_implementation(*eligible, kind=kind, algorithm="winograd")
        assert name, kind
        assert ("wino" in name) == _has_avx512_core(), (kind, name)
        assert "wino" not in onednn.conv_implementation(*eligible, kind=kind, algorithm="direct")
        for case in others:
            name = onednn.conv_implementation(*case, kind=kind, algorithm="winograd")
            assert name and "wino" not in name, (kind, case, name)


def test_conv_algorithm_switch_and_its_bad_values(onednn_kernel, monkeypatch):
    monkeypatch.delenv("JAXNET_ONEDNN_WINOGRAD", raising=False)
    assert onednn.conv_algorithm() == "winograd"
    monkeypatch.setenv("JAXNET_ONEDNN_WINOGRAD", "0")
    assert onednn.conv_algorithm() == "direct"
    with onednn.use_algorithm("winograd"):
        assert onednn.conv_algorithm() == "winograd"
    assert onednn.conv_algorithm() == "direct"
    monkeypatch.setenv("JAXNET_ONEDNN_WINOGRAD", "yes")
    monkeypatch.setattr(onednn, "_warned_values", set())
    with pytest.warns(RuntimeWarning, match="JAXNET_ONEDNN_WINOGRAD must be 0 or 1, got 'yes'; using the default") as rec:
        assert onednn.conv_algorithm() == "winograd"
        assert onednn.conv_algorithm() == "winograd"      # warned once, not at every trace
    assert len(rec) == 1
    monkeypatch.delenv("JAXNET_ONEDNN_WINOGRAD")
    with pytest.raises(ValueError, match=r"use_algorithm: name must be one of \('winograd', 'direct'\), got 'fast'"):
        with onednn.use_algorithm("fast"):
            pass
    assert onednn.conv_algorithm() == "winograd"      # the bad name left nothing behind
    with pytest.raises(ValueError, match="conv_implementation: kind must be one of"):
        onednn.conv_implementation((1, 4, 4, 32), (3, 3, 32, 16), kind="backward")
    with pytest.raises(ValueError, match="conv_implementation: algorithm must be one of"):
        onednn.conv_implementation((1, 4, 4, 32), (3, 3, 32, 16), algorithm="fft")


def test_float64_takes_xla_and_matches_to_1e_12(x64):
    inputs = _inputs(np.float64, CASES[3:5])
    results, hlo = _both(inputs)
    assert "jaxnet_onednn" not in hlo
    for (y, g), (y_ref, g_ref) in results:
        assert y.dtype == jnp.float64
        for a, r in zip((y, *g), (y_ref, *g_ref)):
            assert _rel_err(a, r) < 1e-12


# --- without the kernel (simulated): XLA's results and exactly one message -------------------------

@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as in a new process (its state restored afterwards; targets already registered stay)."""
    saved = dict(onednn._state)
    monkeypatch.setattr(onednn, "_state", {"tried": False, "ok": False, "reason": "", "version": None, "path": None})
    yield monkeypatch
    onednn._state.clear()
    onednn._state.update(saved)


def _messages(caplog):
    return [r for r in caplog.records if "oneDNN kernels (convolution, batch norm) are not used" in r.getMessage()]


def test_jaxnet_onednn_0_falls_back_to_xla_with_one_message(fresh_loader, caplog):
    fresh_loader.setenv("JAXNET_ONEDNN", "0")
    caplog.set_level(logging.INFO, logger="jaxnet")
    (x, w, b, kw), = _inputs(np.float32, CASES[3:4])
    f = jax.jit(lambda x, w, b: _value_and_grads(conv.conv2d_manual, x, w, b, kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # the default mode falls back quietly: no warning
        hlo = f.lower(x, w, b).as_text()
        (y, g), (y_ref, g_ref) = f(x, w, b), _value_and_grads(conv.conv2d, x, w, b, kw)
        assert not onednn.available() and not onednn.load()
    assert "jaxnet_onednn" not in hlo
    for a, r in zip((y, *g), (y_ref, *g_ref)):
        assert _rel_err(a, r) < 1e-5
    msgs = _messages(caplog)
    assert len(msgs) == 1 and "JAXNET_ONEDNN=0" in msgs[0].getMessage()
    assert onednn.info()["reason"] == "JAXNET_ONEDNN=0"


def test_missing_onednn_warns_once_when_asked_for(fresh_loader):
    def missing():
        raise B.BuildError("oneDNN not found (install the extra)")
    fresh_loader.setenv("JAXNET_ONEDNN", "1")
    fresh_loader.setattr(B, "find_onednn", missing)
    with pytest.warns(RuntimeWarning, match="oneDNN not found") as rec:
        assert onednn.load() is False
        assert onednn.load() is False and onednn.available() is False
    assert len([w for w in rec if "oneDNN" in str(w.message)]) == 1
    assert not onednn.usable(np.zeros((1, 2, 2, 1), np.float32))


def test_missing_onednn_is_quiet_by_default(fresh_loader, caplog):
    def missing():
        raise B.BuildError("oneDNN not found (install the extra)")
    fresh_loader.delenv("JAXNET_ONEDNN", raising=False)
    fresh_loader.setattr(B, "find_onednn", missing)
    caplog.set_level(logging.INFO, logger="jaxnet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert onednn.load() is False and onednn.load() is False
    assert len(_messages(caplog)) == 1


def test_failed_build_warns_once_and_falls_back(fresh_loader, tmp_path):
    def failing(force=False):
        raise B.BuildError("compiling kernels.cc failed: error: boom")
    fresh_loader.delenv("JAXNET_ONEDNN", raising=False)
    fresh_loader.setattr(B, "find_onednn", lambda: (tmp_path / "include", tmp_path / "lib"))
    fresh_loader.setattr(B, "cpu_runtime", lambda inc: "OMP")
    fresh_loader.setattr(B, "library_path", lambda: tmp_path / "missing.so")
    fresh_loader.setattr(B, "build", failing)
    with pytest.warns(RuntimeWarning, match="compiling kernels.cc failed") as rec:
        assert onednn.load() is False and onednn.load() is False
    assert len([w for w in rec if "oneDNN" in str(w.message)]) == 1


def test_build_reports_a_missing_compiler_in_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-jaxnet")
    with pytest.raises(B.BuildError, match="no C\\+\\+ compiler") as e:
        B._compiler()
    assert "\n" not in str(e.value)


def test_keep_large_blocks_is_opt_out(monkeypatch):
    monkeypatch.setenv("JAXNET_MALLOC", "0")
    assert onednn.keep_large_blocks() is False
    monkeypatch.delenv("JAXNET_MALLOC")
    import platform
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert onednn.keep_large_blocks() is glibc


_FAULTS_PER_CALL = """
import os, resource, sys
from jaxnet.ops import onednn
applied = onednn.keep_large_blocks_at_start()
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b, c: (a @ b) @ c)          # a @ b, (2000, 10000): an 80 MB temporary buffer,
a, b, c = jnp.ones((2000, 16)), jnp.ones((16, 10000)), jnp.ones((10000, 1))   # more than a thread
for _ in range(30):                                # arena's 64 MB heap holds
    f(a, b, c).block_until_ready()                 # warm: compiled, the heap grown to what it keeps
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt   # (a few blocks: glibc's aligned allocation
for _ in range(10):                                # does not always fit a freed block; measured: it
    f(a, b, c).block_until_ready()                 # settles within ~20 calls, RSS then flat)
late = onednn.keep_large_blocks_at_start()         # a backend runs now: no longer applied
print(applied, late, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10)
"""


def _faults_per_call(malloc_switch):
    import os
    import subprocess
    import sys
    env = {**os.environ, "JAXNET_MALLOC": malloc_switch}
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return out[0] == "True", out[1] == "True", float(out[2])


def test_keep_large_blocks_at_start_stops_the_per_call_page_faults():
    """Applied before the backend starts, a program's 80 MB temporary buffer, allocated and freed
    by XLA in every call, comes from the heap (no fresh pages); with JAXNET_MALLOC=0 glibc maps it
    afresh each call (about 19,500 minor faults: 80 MB of 4 KB pages). Once a backend runs it is
    not applied."""
    import platform
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("keep_large_blocks is glibc's mallopt: on this platform it does nothing (Linux with glibc only)")
    applied, late, tuned = _faults_per_call("1")
    off_applied, _, untuned = _faults_per_call("0")
    assert applied and not late and not off_applied
    assert untuned > 15_000                      # 80 MB of fresh pages per call without it
    assert tuned < 1_000, tuned                  # with it: the freed block is reused


@pytest.fixture
def onednn_headers():
    """Skips the test (saying why) where oneDNN's headers are not installed: it builds the kernel."""
    try:
        B.find_onednn()
    except B.BuildError as e:
        pytest.skip(f"needs oneDNN's headers ({e})")


def test_a_compile_error_is_one_line_with_the_log(onednn_headers, monkeypatch, tmp_path):
    bad = tmp_path / "kernels.cc"
    bad.write_text("int broken = ;\n")
    monkeypatch.setattr(B, "SOURCE", bad)
    monkeypatch.setenv("JAXNET_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(B.BuildError, match="compiling kernels.cc failed: .*error") as e:
        B.build()
    assert "\n" not in str(e.value) and "build.log" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.so"))        # nothing half-written is left as the library


def test_an_unwritable_cache_is_a_one_line_build_error(onednn_headers, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")                                   # the cache root is a file: mkdir fails
    monkeypatch.setenv("JAXNET_CACHE_DIR", str(blocker))
    with pytest.raises(B.BuildError, match="cannot write the kernel's cache") as e:
        B.build()
    assert "\n" not in str(e.value)


def test_several_devices_keep_xla_conv(monkeypatch, onednn_kernel):
    """No sharding rule for the custom calls: with more than one device the manual conv keeps XLA's."""
    x = np.zeros((1, 4, 4, 2), np.float32)
    assert onednn.usable(x)
    monkeypatch.setattr(jax, "device_count", lambda *a: 2)
    assert not onednn.usable(x)


@pytest.mark.parametrize("name", ["JAXNET_ONEDNN", "JAXNET_MALLOC"])
def test_an_unknown_switch_value_warns_naming_it_and_keeps_the_default(fresh_loader, name):
    """A switch that is not 0 or 1 is not silently read as something: one RuntimeWarning naming
    the variable and the value, then the default (the loader's auto mode; malloc tuned)."""
    def missing():
        raise B.BuildError("oneDNN not found (install the extra)")
    fresh_loader.setenv(name, "yes")
    fresh_loader.setattr(B, "find_onednn", missing)
    with pytest.warns(RuntimeWarning, match=f"{name} must be 0 or 1, got 'yes'; using the default") as rec:
        if name == "JAXNET_ONEDNN":
            assert onednn.load() is False                  # auto mode: oneDNN missing -> quiet fallback
            assert onednn.info()["reason"].startswith("oneDNN not found")
        else:
            import platform
            assert onednn.keep_large_blocks() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert len([w for w in rec if name in str(w.message)]) == 1
