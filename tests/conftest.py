import os

# The suite is bound by XLA's compile time (thousands of small programs, each run a few times), so
# it compiles with LLVM's optimisation level 0: measured on a subset of test_nn/test_recurrent_ops,
# 31% less CPU time than the default level. Only the test processes (and the CLI subprocesses they
# start) get it; benchmarks and users never do. A user's own XLA_FLAGS setting of it wins.
_O0 = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _O0).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

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
