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
