import contextlib
import os

import jax
import jax.numpy as jnp
import pytest

# The CLI turns on JAX's persistent compilation cache in ~/.cache; tests never use that one
# (isolation: no files in ~/.cache, nothing carried over between runs). test_compile_cache.py tests it.
os.environ.setdefault("JAXNET_COMPILATION_CACHE", "0")
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
}


# Pipeline tests: the experiments' smoke runs (test_exp_*.py, test_judge.py), the command line's
# runs (test_cli_train.py, test_hardening_cli.py), the multi-device and multi-process runs
# (test_parallel.py) and the tests marked `pipeline` check that a pipeline runs end to end: files,
# exit codes, resumes and shardings that agree with their one-device run, sane outputs; their numbers
# are not meant to be read, and what they compare is compiled the same way on both sides. They are
# compile-bound (a small convnet's train step: ~5 s of XLA on this CPU), so in the default tier they
# compile with XLA's optimisations mostly off (`jax_disable_most_optimizations`, also passed to the
# processes they start: about half the compile time, slower programs); measured 76 -> 54 CPU-s on
# four smoke modules. Everything that checks numbers against a reference (the ops, their gradients,
# the audit, the oracles, float32 extremes, training, init draws) compiles as users' programs do;
# so does the slow tier (`-m slow`: the --quick runs and their claims).
_PIPELINE_MODULES = {"test_judge", "test_cli_train", "test_hardening_cli", "test_parallel"}
_DMO = "jax_disable_most_optimizations"


def _default_tier(config) -> bool:
    return " ".join((config.getoption("markexpr") or "").split()) == "not slow"


@contextlib.contextmanager
def _compile_fast():
    before_flag = bool(jax.config.values.get(_DMO, False))
    before_env = os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS")
    jax.config.update(_DMO, True)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    try:
        yield
    finally:
        jax.config.update(_DMO, before_flag)
        if before_env is None:
            os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
        else:
            os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = before_env
        jax.clear_caches()   # no program compiled this way is reused by the next tests


@pytest.fixture(autouse=True, scope="module")
def _pipeline_module_compiles_fast(request):
    name = request.module.__name__.rsplit(".", 1)[-1]
    if (name.startswith("test_exp_") or name in _PIPELINE_MODULES) and _default_tier(request.config):
        with _compile_fast():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _pipeline_test_compiles_fast(request):
    if request.node.get_closest_marker("pipeline") and _default_tier(request.config) \
            and not bool(jax.config.values.get(_DMO, False)):
        with _compile_fast():
            yield
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
