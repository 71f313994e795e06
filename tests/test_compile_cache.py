"""The persistent compilation cache the CLI turns on: a second process reuses the programs.

Each child process counts JAX's own compilation-cache events (``jax.monitoring``): a hit is
``/jax/compilation_cache/cache_hits`` (the executable was read back from disk), a miss that
wrote an entry is ``/jax/compilation_cache/cache_misses``. The file listing alone cannot tell
a hit from a miss that rewrote the same entry.
"""

import json
import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import collections, json, jax, jax.numpy as jnp, jaxnet
    events = collections.Counter()
    jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))
    where = jaxnet.enable_compilation_cache()
    assert where == {where!r}, where
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    f.lower(jnp.ones((64, 64))).compile()
    prefix = "/jax/compilation_cache/"
    print(json.dumps({{k[len(prefix):]: v for k, v in events.items() if k.startswith(prefix)}}))
""")


def _run(cache, env_value=None) -> dict:
    """One child process compiling the same small program; its cache event counts."""
    env = {**os.environ, "JAXNET_COMPILATION_CACHE": env_value if env_value is not None else str(cache)}
    proc = subprocess.run([sys.executable, "-c", CODE.format(where=str(cache) if env_value is None else None)],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _run(cache)
    assert first.get("cache_hits", 0) == 0, first          # an empty cache: nothing to read
    assert first.get("cache_misses", 0) >= 1, first        # ... so it compiled and wrote
    entries = sorted(os.listdir(cache))
    assert entries, "the first process wrote nothing to the cache"

    second = _run(cache)
    assert second.get("cache_hits", 0) >= 1, second        # read back from disk
    assert second.get("cache_misses", 0) == 0, second      # nothing compiled afresh
    assert sorted(os.listdir(cache)) == entries


def test_zero_turns_it_off(tmp_path):
    counts = _run(tmp_path / "never", env_value="0")
    assert not (tmp_path / "never").exists()
    assert counts.get("cache_hits", 0) == 0 and counts.get("cache_misses", 0) == 0, counts  # no reads, no writes
