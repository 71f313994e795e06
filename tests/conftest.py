import os

import jax
import pytest

# The CLI turns on JAX's persistent compilation cache; tests run without it (isolation:
# no files in ~/.cache, no programs carried over between runs). test_compile_cache.py tests it.
os.environ.setdefault("JAXNET_COMPILATION_CACHE", "0")


@pytest.fixture
def x64():
    """Float64 for the duration of one test (gradient checks must run in double precision)."""
    with jax.enable_x64(True):
        yield


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


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if name in _GROUPED_MODULES and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(name))
