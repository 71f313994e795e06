"""Optional CPU accelerator: oneDNN convolutions and batch norm as XLA custom calls (``jax.ffi``), float32, NHWC.

The manual convolution (:func:`jaxnet.ops.conv.conv2d_manual`, plain convolutions) calls these
kernels for its forward pass and for the course's two backward convolutions (dX and dW), and the
manual fused batch norm + ReLU (:func:`jaxnet.ops.norm.batch_norm_relu_manual`, train mode) calls
oneDNN's batch normalization with the ReLU fused in (forward, and the backward from oneDNN's
ReLU mask), when the kernel is loaded, the arrays are float32 and the computation is on the CPU;
otherwise they use XLA, with the same results up to float32 rounding.

Convolutions that are 3x3, stride 1, padding 1, with channel counts that are multiples of 16 and at
least 32 input channels run oneDNN's Winograd F(4x4, 3x3) kernels (forward, backward data and
backward weights; oneDNN 3.0 has them for AVX-512 CPUs, later releases dropped them), every other
one its direct kernels; where oneDNN has no Winograd kernel the direct one runs.  The algorithm is
fixed when a function is traced: :func:`conv_algorithm` (``JAXNET_ONEDNN_WINOGRAD=0`` makes it
"direct"), :func:`use_algorithm` for a block, :func:`conv_implementation` names the kernel a
shape gets.

Install with ``pip install 'jaxnet[cpu-fast]'`` (oneDNN's library and headers from PyPI: the
CPU-only ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` 2023.0.0 wheels, oneDNN 3.0; any oneDNN
3.x works, without Winograd after 3.0, and the SYCL ``onednn`` / ``onednn-devel`` wheels too) or
``make cpu-fast``; the small library is compiled on first use (about 15 s, once: see :mod:`jaxnet.ops.onednn.build`) and cached.  ``JAXNET_ONEDNN``:

- unset: use the kernel when oneDNN is installed (building it if needed); when it is not, fall
  back to XLA, saying so once at INFO level on the ``jaxnet`` logger;
- ``0``: never use it (one INFO message);
- ``1``: the user asks for it: a missing oneDNN or a failed build warns once (``RuntimeWarning``).

Installed but failing (no compiler, a failed build or self-test) always warns once.

When the kernel loads, glibc's malloc is told to keep large blocks on one heap
(:func:`keep_large_blocks`: ``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` = 1 GiB,
``M_ARENA_MAX`` = 1, so that XLA's worker threads allocate from that heap too): otherwise the
buffers XLA allocates for every step are fresh ``mmap`` pages, page-faulted in again each step
(about 11,000 minor faults, 44 MB, per step of the benchmark net; the oneDNN step ran 0.97x
PyTorch channels-last with them and 1.25-1.39x without, measured in separate processes).  The
process then keeps its peak heap instead of returning it to the OS, and its threads share one
malloc arena.  ``JAXNET_MALLOC=0`` leaves malloc alone.  Set when the kernel loads, it reaches
only blocks up to 64 MB (XLA's threads already have arenas of their own by then); ``jaxnet
train`` and the CIFAR-10 race set it at their start (:func:`keep_large_blocks_at_start`), which
also covers larger per-step buffers (117 MB for ``fast_convnet`` at batch 256).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import warnings

import jax
import numpy as np

TARGETS = {"jaxnet_onednn_conv_fwd": "JaxnetOnednnConvFwd",
           "jaxnet_onednn_conv_bwd_data": "JaxnetOnednnConvBwdData",
           "jaxnet_onednn_conv_bwd_weights": "JaxnetOnednnConvBwdWeights",
           "jaxnet_onednn_conv_fwd_winograd": "JaxnetOnednnConvFwdWino",
           "jaxnet_onednn_conv_bwd_winograd": "JaxnetOnednnConvBwdWino",
           "jaxnet_onednn_bn_fwd": "JaxnetOnednnBnFwd",
           "jaxnet_onednn_bn_bwd": "JaxnetOnednnBnBwd"}

_log = logging.getLogger("jaxnet")
_lock = threading.Lock()
_state: dict = {"tried": False, "ok": False, "reason": "", "version": None, "path": None, "lib": None}
_disabled = [0]


def _switch(name: str) -> str:
    """The environment switch ``name``: "0", "1" or "" (unset: the default). Any other value warns
    once, naming it, and counts as unset."""
    v = os.environ.get(name, "").strip()
    if v not in ("", "0", "1"):
        warnings.warn(f"jaxnet: {name} must be 0 or 1, got {v!r}; using the default", RuntimeWarning, stacklevel=3)
        return ""
    return v


def _mode() -> str:
    return _switch("JAXNET_ONEDNN") or "auto"


def _fallback(reason: str, *, loud: bool) -> None:
    _state["reason"] = reason
    msg = f"jaxnet: the oneDNN kernels (convolution, batch norm) are not used ({reason}); using XLA's"
    if loud:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    else:
        _log.info(msg)


def _prepare_sycl_runtime(lib_dir) -> None:
    """A SYCL build of oneDNN (the ``onednn`` 2026 wheel) runs CPU kernels on a SYCL CPU device:
    point the OpenCL loader at the CPU runtime the ``intel-opencl-rt`` wheel installs beside it."""
    icd = lib_dir / "libintelocl.so"
    if icd.exists() and "OCL_ICD_FILENAMES" not in os.environ:
        os.environ["OCL_ICD_FILENAMES"] = str(icd)


def keep_large_blocks(limit: int = 1 << 30) -> bool:
    """glibc only: serve blocks up to ``limit`` bytes from the heap and keep freed ones there
    (``mallopt(M_MMAP_THRESHOLD, limit)``, ``mallopt(M_TRIM_THRESHOLD, limit)``), all threads
    from one arena (``mallopt(M_ARENA_MAX, 1)``: a thread arena's heap is at most 64 MB, so
    larger blocks there are mmapped whatever the threshold); True if applied.  Skipped with
    ``JAXNET_MALLOC=0`` or without glibc."""
    if _switch("JAXNET_MALLOC") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        return (bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))
                and bool(libc.mallopt(m_arena_max, 1)))
    except (OSError, AttributeError):       # not glibc
        return False


def keep_large_blocks_at_start() -> bool:
    """:func:`keep_large_blocks` for a process that is about to train, called before JAX starts its
    backend (True if applied; False once a backend runs, with ``JAXNET_MALLOC=0`` or without glibc).

    A thread's malloc arena is fixed at its first allocation, so ``M_ARENA_MAX`` = 1 set when the
    kernel loads reaches only threads started later: XLA's worker threads by then allocate from
    arenas of their own, whose heaps hold blocks up to 64 MB. A larger per-step buffer (117 MB
    for ``fast_convnet`` at batch 256: the CIFAR-10 race) is then mapped afresh and page-faulted
    in every step (about 28,700 minor faults per step). Set at the start, every thread uses the
    one heap and the step has none. The cost: one arena makes XLA's multi-threaded compiles
    about 20 % slower (docs/performance.md), so ``jaxnet train`` and the race's jaxnet process
    call this, and ``import jaxnet`` does not."""
    from jaxnet._xla_flags import backend_may_have_started
    return not backend_may_have_started() and keep_large_blocks()


def load() -> bool:
    """Build (if needed), load and register the kernels once; True when they are usable.

    Never raises: a missing oneDNN, a failed build or a failed self-test gives one message
    (see the module docstring) and False, and jaxnet keeps using XLA's convolution.
    """
    if _state["tried"]:
        return _state["ok"]
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        _state["tried"] = True
        mode = _mode()
        if mode == "0":
            _fallback("JAXNET_ONEDNN=0", loud=False)
            return False
        from jaxnet.ops.onednn import build as B
        try:
            inc, lib_dir = B.find_onednn()
        except B.BuildError as e:
            _fallback(str(e), loud=mode == "1")
            return False
        try:
            if B.cpu_runtime(inc) == "SYCL":
                _prepare_sycl_runtime(lib_dir)
            path = B.library_path()
            if not path.is_file():
                _log.info("jaxnet: building the oneDNN convolution kernel (once, ~15 s) ...")
            path = B.build()
            lib = ctypes.CDLL(str(path))
            lib.jaxnet_onednn_selftest.restype = ctypes.c_char_p
            lib.jaxnet_onednn_version.restype = ctypes.c_char_p
            lib.jaxnet_onednn_bn_workspace_bytes.restype = ctypes.c_int64
            lib.jaxnet_onednn_bn_workspace_bytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_float, ctypes.c_int64]
            lib.jaxnet_onednn_wino_pair.restype = ctypes.c_int64
            lib.jaxnet_onednn_wino_pair.argtypes = [ctypes.POINTER(ctypes.c_int64)]
            lib.jaxnet_onednn_conv_impl.restype = None
            lib.jaxnet_onednn_conv_impl.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
                                                    ctypes.c_char_p, ctypes.c_int64]
            err = lib.jaxnet_onednn_selftest().decode()
            if err:
                raise RuntimeError(f"oneDNN self-test failed: {err}")
            for target, symbol in TARGETS.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        except Exception as e:  # noqa: BLE001 - any failure means: fall back, once, with the reason
            _fallback(" ".join(str(e).split()) or type(e).__name__, loud=True)
            return False
        _state.update(ok=True, version=lib.jaxnet_onednn_version().decode(), path=str(path), lib=lib)
        keep_large_blocks()
        _log.info("jaxnet: oneDNN %s convolution kernel loaded from %s", _state["version"], path)
        return True


def available() -> bool:
    """True when the oneDNN kernels are loaded (loading them on the first call)."""
    return load()


def info() -> dict:
    """What :func:`load` found: ok, reason (why not), oneDNN version, library path."""
    load()
    return {k: _state[k] for k in ("ok", "reason", "version", "path")}


CONV_KINDS = ("forward", "backward_data", "backward_weights")


def _geom(x_shape, w_shape, stride, pads):
    (pt, pb), (pl, pr) = pads
    ho, wo = _out_hw(x_shape[1:3], w_shape[:2], stride, pads)
    return (ctypes.c_int64 * 15)(x_shape[0], x_shape[1], x_shape[2], x_shape[3], w_shape[0], w_shape[1], w_shape[3],
                                 ho, wo, stride[0], stride[1], pt, pb, pl, pr)


_pairs: dict = {}


def winograd_pair(x_shape, w_shape, stride, pads) -> bool:
    """True when a layer of these shapes runs as a Winograd pair under the current
    :func:`conv_algorithm`: its three convolutions all have Winograd kernels with matching layouts,
    so :func:`conv_fwd_winograd` / :func:`conv_bwd_winograd` apply (asked of oneDNN once per shape)."""
    if conv_algorithm() != "winograd" or not load():
        return False
    key = (tuple(x_shape), tuple(w_shape), tuple(stride), tuple(map(tuple, pads)))
    if key not in _pairs:
        _pairs[key] = bool(_state["lib"].jaxnet_onednn_wino_pair(_geom(x_shape, w_shape, stride, pads)))
    return _pairs[key]


def conv_implementation(x_shape, w_shape, stride=(1, 1), pads=((1, 1), (1, 1)), kind="forward",
                        algorithm=None) -> str:
    """oneDNN's name for the kernel that runs convolution ``kind`` ("forward", "backward_data" or
    "backward_weights") of x (N, H, W, C) with filters (KH, KW, C, O), as the custom calls would run
    it under ``algorithm`` (default: :func:`conv_algorithm`), e.g. ``"jit_wino_4x3:avx512_core"``
    (Winograd) or ``"brgconv:avx512_core"`` (direct); "" when oneDNN has no kernel for it.
    Raises RuntimeError when the kernels are not loaded."""
    if kind not in CONV_KINDS:
        raise ValueError(f"jaxnet onednn: conv_implementation: kind must be one of {CONV_KINDS}, got {kind!r}")
    algorithm = conv_algorithm() if algorithm is None else algorithm
    if algorithm not in ALGORITHMS:
        raise ValueError(f"jaxnet onednn: conv_implementation: algorithm must be one of {ALGORITHMS}, "
                         f"got {algorithm!r}")
    if not load():
        raise RuntimeError(f"jaxnet onednn: the kernels are not loaded ({_state['reason']})")
    geom = _geom(x_shape, w_shape, stride, pads)
    out = ctypes.create_string_buffer(256)
    _state["lib"].jaxnet_onednn_conv_impl(CONV_KINDS.index(kind), geom, int(algorithm == "winograd"), out, 256)
    return out.value.decode()


def usable(*arrays) -> bool:
    """True when the kernels may run these arrays (None entries skipped; the rest non-empty float32)
    in the current trace: loaded, JAX's default backend is the CPU, and it has one device (the
    custom calls have no sharding rule: under a data-parallel ``jit`` over several devices XLA
    would gather every shard and run the whole batch on each device, so those keep XLA's conv)."""
    if _disabled[0] or not all(a.dtype == np.float32 and a.size > 0 for a in arrays if a is not None):
        return False
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and load()


ALGORITHMS = ("winograd", "direct")
_algorithm: list = []
_warned_values: set = set()


def conv_algorithm() -> str:
    """The convolution algorithm functions traced now ask oneDNN for: "winograd" (the default:
    oneDNN's Winograd F(4x4, 3x3) for the 3x3, stride-1, padding-1 convolutions whose channel counts
    are multiples of 16, on CPUs where oneDNN has it, its direct algorithm for every other
    convolution) or "direct" (always the direct one).  ``JAXNET_ONEDNN_WINOGRAD=0`` makes "direct"
    the default; :func:`use_algorithm` sets it for a block."""
    if _algorithm:
        return _algorithm[-1]
    v = os.environ.get("JAXNET_ONEDNN_WINOGRAD", "").strip()
    if v not in ("", "0", "1") and v not in _warned_values:   # once per bad value, not at every trace
        _warned_values.add(v)
        _switch("JAXNET_ONEDNN_WINOGRAD")
    return "direct" if v == "0" else "winograd"


@contextlib.contextmanager
def use_algorithm(name: str):
    """Within this block, convolutions traced ask oneDNN for algorithm ``name`` ("winograd" or
    "direct"; see :func:`conv_algorithm`). A function already traced keeps what it was traced with."""
    if name not in ALGORITHMS:
        raise ValueError(f"jaxnet onednn: use_algorithm: name must be one of {ALGORITHMS}, got {name!r}")
    _algorithm.append(name)
    try:
        yield
    finally:
        _algorithm.pop()


@contextlib.contextmanager
def disabled():
    """Within this block, functions traced use XLA's convolution (for side-by-side benchmarks and
    tests; a function already traced keeps what it was traced with)."""
    _disabled[0] += 1
    try:
        yield
    finally:
        _disabled[0] -= 1


# --- the custom calls -------------------------------------------------------------------------------

def _attrs(stride, pads):
    (pt, pb), (pl, pr) = pads
    return dict(sh=np.int64(stride[0]), sw=np.int64(stride[1]), pt=np.int64(pt), pb=np.int64(pb),
                pl=np.int64(pl), pr=np.int64(pr))


def _wino():
    """The ``wino`` attribute of the separate convolution calls: 1 when traced under "winograd"."""
    return np.int64(conv_algorithm() == "winograd")


def _out_hw(in_hw, kernel, stride, pads):
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel, stride, pads))


def _call(target, out, *args, **attrs):
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


def conv_fwd(x, w, b, stride, pads, relu=False):
    """y = conv(x, w) + b, then ReLU if ``relu``, by oneDNN (bias and ReLU fused into the kernel).

    x: (N, H, W, C) float32.  w: (KH, KW, C, O) float32.  b: (O,) float32 or None.
    stride: (sh, sw).  pads: ((top, bottom), (left, right)), explicit and non-negative.
    Returns (N, Ho, Wo, O) float32, ``Ho = (H + top + bottom - KH) // sh + 1``.
    """
    n, o = x.shape[0], w.shape[3]
    ho, wo = _out_hw(x.shape[1:3], w.shape[:2], stride, pads)
    bias = jax.numpy.zeros((0,), np.float32) if b is None else b
    return _call("jaxnet_onednn_conv_fwd", jax.ShapeDtypeStruct((n, ho, wo, o), np.float32), x, w, bias,
                 **_attrs(stride, pads), relu=np.int64(bool(relu)), has_bias=np.int64(b is not None), wino=_wino())


def conv_bwd_data(dy, w, x_shape, stride, pads):
    """dX of conv(x, w): the full convolution of dy with the flipped filters, by oneDNN.

    dy: (N, Ho, Wo, O) float32.  w: (KH, KW, C, O) float32.  x_shape: (N, H, W, C).
    Returns (N, H, W, C) float32.
    """
    return _call("jaxnet_onednn_conv_bwd_data", jax.ShapeDtypeStruct(tuple(x_shape), np.float32), dy, w,
                 **_attrs(stride, pads), wino=_wino())


def conv_bwd_weights(x, dy, w_shape, stride, pads, bias=True):
    """dW (and db = sum of dy over N, H, W when ``bias``) of conv(x, w), by oneDNN.

    x: (N, H, W, C) float32.  dy: (N, Ho, Wo, O) float32.  w_shape: (KH, KW, C, O).
    Returns (dw (KH, KW, C, O), db (O,) or None), float32.
    """
    o = w_shape[3]
    dw, db = _call("jaxnet_onednn_conv_bwd_weights",
                   (jax.ShapeDtypeStruct(tuple(w_shape), np.float32), jax.ShapeDtypeStruct((o if bias else 0,), np.float32)),
                   x, dy, **_attrs(stride, pads), has_bias=np.int64(bool(bias)), wino=_wino())
    return dw, (db if bias else None)


def conv_fwd_winograd(x, w, b, stride, pads, relu=False):
    """:func:`conv_fwd` by a Winograd pair (:func:`winograd_pair` must be True for the shapes), also
    returning ``xb``: x in oneDNN's blocked layout, flat float32 (N*H*W*C,), the residual that
    :func:`conv_bwd_winograd` takes instead of x.  Returns (y (N, Ho, Wo, O), xb)."""
    n, o = x.shape[0], w.shape[3]
    ho, wo = _out_hw(x.shape[1:3], w.shape[:2], stride, pads)
    bias = jax.numpy.zeros((0,), np.float32) if b is None else b
    return _call("jaxnet_onednn_conv_fwd_winograd",
                 (jax.ShapeDtypeStruct((n, ho, wo, o), np.float32), jax.ShapeDtypeStruct((x.size,), np.float32)),
                 x, w, bias, **_attrs(stride, pads), relu=np.int64(bool(relu)), has_bias=np.int64(b is not None))


def conv_bwd_winograd(xb, dy, w, x_shape, stride, pads, bias=True):
    """dx, dw (and db when ``bias``) of a Winograd pair's layer from :func:`conv_fwd_winograd`'s xb,
    dy (N, Ho, Wo, O) and w; dy is reordered into oneDNN's layout once for both convolutions.
    Returns (dx like x_shape, dw like w, db (O,) or None), float32."""
    o = w.shape[3]
    dx, dw, db = _call("jaxnet_onednn_conv_bwd_winograd",
                       (jax.ShapeDtypeStruct(tuple(x_shape), np.float32), jax.ShapeDtypeStruct(w.shape, np.float32),
                        jax.ShapeDtypeStruct((o if bias else 0,), np.float32)),
                       xb, dy, w, **_attrs(stride, pads), has_bias=np.int64(bool(bias)))
    return dx, dw, (db if bias else None)


def _nhwc(x):
    """x (N, H, W, C), or (N, C) seen as (N, 1, 1, C)."""
    return x if x.ndim == 4 else x.reshape(x.shape[0], 1, 1, x.shape[-1])


def bn_workspace_bytes(x_shape, eps, relu=True) -> int:
    """Bytes of the ReLU mask :func:`bn_fwd` returns for ``x_shape`` ((N, H, W, C) or (N, C))."""
    n, h, w, c = x_shape if len(x_shape) == 4 else (x_shape[0], 1, 1, x_shape[-1])
    size = int(_state["lib"].jaxnet_onednn_bn_workspace_bytes(n, h, w, c, float(eps), int(bool(relu))))
    if size < 0:
        raise RuntimeError(f"jaxnet onednn: no batch-norm primitive for shape {tuple(x_shape)}")
    return size


def bn_fwd(x, gamma, beta, eps, relu=True):
    """Train-mode batch norm by oneDNN: ``y = [ReLU](gamma * (x - mean) / sqrt(var + eps) + beta)``.

    x: (N, H, W, C) or (N, C) float32; gamma, beta: (C,) float32.  Returns (y like x, mean (C,),
    var (C,) biased, over every axis but the last, ws): ws is oneDNN's ReLU mask (uint8 bytes, for
    :func:`bn_bwd`; empty without ReLU).
    """
    c = x.shape[-1]
    stat = jax.ShapeDtypeStruct((c,), np.float32)
    ws = jax.ShapeDtypeStruct((bn_workspace_bytes(x.shape, eps, relu),), np.uint8)
    y, mean, var, mask = _call("jaxnet_onednn_bn_fwd", (jax.ShapeDtypeStruct(_nhwc(x).shape, np.float32), stat, stat, ws),
                               _nhwc(x), gamma, beta, eps=np.float32(eps), relu=np.int64(bool(relu)))
    return y.reshape(x.shape), mean, var, mask


def bn_bwd(x, mean, var, gamma, dy, ws, eps, relu=True):
    """dx (like x), dgamma, dbeta ((C,)) of :func:`bn_fwd` at x for the cotangent dy of y, by oneDNN
    (the ReLU's mask from ``ws``); mean, var as bn_fwd returned them."""
    c = x.shape[-1]
    stat = jax.ShapeDtypeStruct((c,), np.float32)
    dx, dgamma, dbeta = _call("jaxnet_onednn_bn_bwd", (jax.ShapeDtypeStruct(_nhwc(x).shape, np.float32), stat, stat),
                              _nhwc(x), mean, var, gamma, _nhwc(dy), ws, eps=np.float32(eps), relu=np.int64(bool(relu)))
    return dx.reshape(x.shape), dgamma, dbeta


__all__ = ["available", "load", "info", "usable", "disabled", "conv_algorithm", "use_algorithm", "ALGORITHMS",
           "conv_implementation", "winograd_pair", "conv_fwd_winograd", "conv_bwd_winograd", "conv_fwd", "conv_bwd_data", "conv_bwd_weights",
           "bn_workspace_bytes", "bn_fwd", "bn_bwd", "keep_large_blocks", "keep_large_blocks_at_start"]
