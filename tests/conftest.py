import os

import jax
import jax.numpy as jnp
import pytest

# The CLI turns on JAX's persistent compilation cache in ~/.cache; tests never use that one
# (isolation: no files in ~/.cache, nothing carried over between runs). test_compile_cache.py tests it.
os.environ.setdefault("JAXNET_COMPILATION_CACHE", "0")
# Test workers keep glibc's malloc as it is: a `jaxnet train` run in-process (cli.main) that is a worker's
# first JAX work would otherwise give every later thread of that worker one malloc arena
# (keep_large_blocks_at_start), which makes XLA's compiles ~20 % slower. The tests of the setting
# itself set the variable explicitly (tests/test_conv_onednn.py).
os.environ.setdefault("JAXNET_MALLOC", "0")
_RUN_CACHE = "JAXNET_TEST_RUN_CACHE"


def pytest_configure(config):
    """A compilation cache for this test run only, shared by its xdist workers, deleted at the end.

    Tests build their programs afresh (a new ``jax.jit`` of a new closure, ``fit`` in test after
    test, the same experiment step in several modules), and many are the same program: with the
    cache, each is compiled once per run and deserialized after that, the same executable XLA
    built. The directory is new for every run, so nothing is carried between runs.
    ``JAXNET_TEST_RUN_CACHE=0`` runs without it.
    """
    if os.environ.get(_RUN_CACHE) == "0":
        return
    if not hasattr(config, "workerinput") and not os.environ.get(_RUN_CACHE):
        import tempfile                  # the controller (or a run without xdist): make the directory;
        os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="jaxnet-test-cache-")  # workers inherit it
        config._jaxnet_run_cache = os.environ[_RUN_CACHE]
    if not os.environ.get("JAXNET_UNDERSTAND_NET_DIR"):   # the understanding experiments' cached smoke net:
        os.environ["JAXNET_UNDERSTAND_NET_DIR"] = os.path.join(os.environ[_RUN_CACHE], "understand_net")  # per run
    if not os.environ.get("JAXNET_JUDGE_DIR"):           # the generative experiments' sample judge: per run too
        os.environ["JAXNET_JUDGE_DIR"] = os.path.join(os.environ[_RUN_CACHE], "judge")
    jax.config.update("jax_compilation_cache_dir", os.environ[_RUN_CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    where = getattr(config, "_jaxnet_run_cache", None)
    if where:
        import shutil
        shutil.rmtree(where, ignore_errors=True)
        os.environ.pop(_RUN_CACHE, None)


@pytest.fixture
def x64():
    """Float64 for the duration of one test (gradient checks must run in double precision)."""
    with jax.enable_x64(True):
        yield


def normal(key, shape, dtype=None):
    """``jax.random.normal``'s role in tests, without its compile: standard normal draws by NumPy,
    seeded from the key's bits (an eager ``jax.random.normal`` compiles a kernel for every new
    shape, about 0.5 s each on a 2-core CPU). ``dtype`` defaults to JAX's default float."""
    from jaxnet.ops._sampling import normal as draw
    return jnp.asarray(draw(key, shape, dtype or jnp.result_type(float)))


def run_quick_experiment(module, out, *extra):
    """``module.main(["--quick", "--out", out, *extra])`` on the embedded digits: the
    experiments' smoke runs, whatever ``$JAXNET_CIFAR10_DIR`` says. Returns main's results."""
    mp = pytest.MonkeyPatch()
    mp.delenv("JAXNET_CIFAR10_DIR", raising=False)
    try:
        return module.main(["--quick", "--out", str(out), *extra])
    finally:
        mp.undo()


# Under `make test` (-n 2 --dist loadgroup), a module in an xdist group runs whole on one worker.
# These modules exercise the same ops at the same shapes test after test: kept on one worker,
# each kernel and program compiles once instead of once per worker (measured: -12% CPU time on
# the op suites, docs/performance.md "The test suite's time"). The small modules left ungrouped
# balance the two workers at the end.
_GROUPED_MODULES = {
    "test_audit", "test_oracle", "test_op_args", "test_float32_extremes", "test_transforms",
    "test_recurrent_ops", "test_nn", "test_nn_recurrent", "test_sequence_ops", "test_attention_ops",
    "test_optim", "test_knn", "test_linear", "test_audit_sensitivity", "test_decode", "test_norm_dropout",
    "test_training_paths",   # compiled as users' programs are (below): one switch
}


# The default tier compiles fast: XLA's optimisations mostly off (`jax_disable_most_optimizations`:
# the CPU backend at -O0, its expensive LLVM passes off) and XLA's older loop emitters for fusions
# (`xla_cpu_use_fusion_emitters=false`); the processes the tests start get the same through
# `JAX_DISABLE_MOST_OPTIMIZATIONS=1` and `XLA_FLAGS`. The suite is bound by XLA compiling thousands of
# programs: measured on this 2-core CPU, -O0 compiles in ~0.6x the time (the programs run up to 2x
# slower) and the loop emitters halve the rest (docs/performance.md). What the default tier asserts
# does not depend on either: the gradient checks and oracles run in float64 (the two settings differ by
# rounding at 1e-16), the pipeline checks (experiment smokes, CLI runs, shardings) compare programs
# compiled the same way on both sides. Where it does depend on them, the module compiles as users'
# programs do (XLA's defaults), listed here with the reason:
_COMPILED_AS_USERS = {
    "test_float32_extremes": "float32 rounding at extreme inputs is what it checks (at -O0 gru's "
                             "manual and autodiff paths differ by 0.16 at scale -100)",
    "test_training_paths": "execution-bound (a convnet trained both ways)",
    "test_exp_batchnorm": "its smoke asserts what training reaches from a std-1e-4 init, where float32 "
                          "rounding moves the 4-epoch validation accuracy (0.626 at XLA's defaults, 0.80 or "
                          "0.60 at -O0 depending on how batch norm and its ReLU are fused)",
}
# The slow tier (`make test-slow`, `-m slow`) and `make gradcheck` compile at XLA's defaults too.
_DMO = "jax_disable_most_optimizations"
_DMO_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
_FAST_XLA_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_FAST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def _default_tier(config) -> bool:
    return " ".join((config.getoption("markexpr") or "").split()) == "not slow"


def _compile_options_fast_when_asked(get_compile_options):
    """jax's ``get_compile_options`` that adds ``_FAST_XLA_OPTIONS`` while optimisations are off."""
    def wrapped(*args, **kwargs):
        options = get_compile_options(*args, **kwargs)
        if bool(jax.config.values.get(_DMO, False)):
            options.env_option_overrides = [*options.env_option_overrides, *_FAST_XLA_OPTIONS.items()]
        return options
    wrapped.__wrapped__ = get_compile_options
    return wrapped


def _set_compile_fast(on: bool) -> None:
    jax.config.update(_DMO, on)
    os.environ[_DMO_ENV] = "1" if on else "0"
    flags = os.environ.get("XLA_FLAGS", "").replace(_FAST_XLA_FLAGS, "").split()
    os.environ["XLA_FLAGS"] = " ".join(flags + [_FAST_XLA_FLAGS] if on else flags)


@pytest.fixture(autouse=True, scope="session")
def _default_tier_compiles_fast(request):
    """Compile fast for the whole default tier (the module fixture below exempts the modules listed)."""
    if not _default_tier(request.config):
        yield
        return
    from jax._src import compiler
    # XLA reads XLA_FLAGS once, at its first compile: compile here first, so the flag added to the
    # environment below reaches only the processes the tests start (this one gets it per compile)
    jax.block_until_ready(jax.jit(lambda v: v + 1)(0))
    before = {k: os.environ.get(k) for k in (_DMO_ENV, "XLA_FLAGS")}
    compiler.get_compile_options = _compile_options_fast_when_asked(compiler.get_compile_options)
    _set_compile_fast(True)
    yield
    compiler.get_compile_options = compiler.get_compile_options.__wrapped__
    jax.config.update(_DMO, False)
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True, scope="module")
def _module_compiled_as_users(request, _default_tier_compiles_fast):
    name = request.module.__name__.rsplit(".", 1)[-1]
    if name in _COMPILED_AS_USERS and bool(jax.config.values.get(_DMO, False)):
        # what these modules check is compiled here, at XLA's defaults (a new `jax.jit` per check);
        # the helpers they call that earlier tests compiled (samplers, eager primitives) are reused
        _set_compile_fast(False)
        try:
            yield
        finally:
            _set_compile_fast(True)
            # and what they compiled at XLA's defaults (eager primitives, init draws) is not reused by
            # later modules, which compare against programs compiled fast (-O0 can differ in the last bit)
            jax.clear_caches()
    else:
        yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if name in _GROUPED_MODULES and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(name))


def assert_bad_flags_exit(module, flags, message, out, capsys, *extra):
    """``module.main(["--smoke", "--out", out, *extra, *flags])`` exits with status 2 and one stderr
    line ``experiments.NAME: ...`` containing ``message`` (the embedded digits, whatever
    ``$JAXNET_CIFAR10_DIR`` says)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("JAXNET_CIFAR10_DIR", raising=False)
    try:
        with pytest.raises(SystemExit) as e:
            module.main(["--smoke", "--out", str(out), *extra, *flags])
    finally:
        mp.undo()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"experiments.{module.NAME}: ") and message in err[0], err


@pytest.fixture(scope="module")
def onednn_kernel():
    """The oneDNN kernels' info (jaxnet.ops.onednn); skips, saying why, where they are not available
    (the cpu-fast extra is optional: CI runs without it)."""
    from jaxnet.ops import onednn
    if not onednn.available():
        pytest.skip(f"the oneDNN kernel is not available ({onednn.info()['reason']}); "
                    "install the cpu-fast extra (make cpu-fast) to test it")
    return onednn.info()
