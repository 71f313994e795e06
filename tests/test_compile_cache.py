"""The persistent compilation cache the CLI turns on: a second process reuses the programs."""

import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import time, jax, jax.numpy as jnp, jaxnet
    where = jaxnet.enable_compilation_cache()
    assert where == {where!r}, where
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    t0 = time.perf_counter(); f.lower(jnp.ones((64, 64))).compile(); print(time.perf_counter() - t0)
""")


def _run(cache, env_value=None):
    env = {**os.environ, "JAXNET_COMPILATION_CACHE": env_value if env_value is not None else str(cache)}
    return subprocess.run([sys.executable, "-c", CODE.format(where=str(cache) if env_value is None else None)],
                          capture_output=True, text=True, check=True, env=env)


def test_second_process_reads_the_cache(tmp_path):
    cache = tmp_path / "xla"
    _run(cache)
    entries = sorted(os.listdir(cache))
    assert entries, "the first process wrote nothing to the cache"
    _run(cache)
    assert sorted(os.listdir(cache)) == entries  # same program: read back, nothing new written


def test_zero_turns_it_off(tmp_path):
    _run(tmp_path / "never", env_value="0")
    assert not (tmp_path / "never").exists()
