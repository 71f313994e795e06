"""JAX's persistent compilation cache, switched on by jaxnet's command line (not on import).

A compiled program (a train step, an init) is written to disk and reused by the next
process that compiles the same program with the same jax/XLA version and flags, so a
second ``jaxnet train`` skips most of its compile time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV = "JAXNET_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    """``$JAXNET_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/jaxnet/xla`` (``~/.cache/jaxnet/xla``)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxnet" / "xla"


def enable_compilation_cache(path: Optional[os.PathLike] = None) -> Optional[str]:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`),
    caching every compiled program (no minimum compile time or size).

    ``JAXNET_COMPILATION_CACHE=0`` turns it off (returns None). A cache directory the user
    already configured (``jax_compilation_cache_dir``) is kept. Returns the directory used.
    """
    import jax

    if os.environ.get(ENV) == "0":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return str(current)
    where = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: run without a cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(where)
