"""Compile ``kernels.cc`` (jaxnet's oneDNN custom calls) into a shared library, once per version.

Finds oneDNN's headers and ``libdnnl.so`` where the ``onednn`` / ``onednn-devel`` wheels put them
(``<prefix>/include`` and ``<prefix>/lib`` of the environment, or ``JAXNET_ONEDNN_PREFIX``), the
XLA FFI headers with :func:`jax.ffi.include_dir`, and runs ``g++ -O3 -shared -fPIC`` (``CXX``
overrides the compiler) with an rpath to oneDNN's library directory.  The library goes to
``~/.cache/jaxnet/onednn/<hash>/`` (``JAXNET_CACHE_DIR`` or ``XDG_CACHE_HOME`` move it), the hash
covering the source, the compiler command, jaxlib's and oneDNN's versions; it is written under a
temporary name and renamed, so concurrent builds (two test workers) never see half a file.
``python -m jaxnet.ops.onednn.build`` builds it and prints the path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.cc")
LIB_NAME = "libjaxnet_onednn.so"


class BuildError(RuntimeError):
    """The oneDNN kernel could not be built; the message is one line."""


def _prefixes() -> list[Path]:
    env = os.environ.get("JAXNET_ONEDNN_PREFIX")
    out = [Path(env)] if env else []
    return out + [Path(sys.prefix), Path(sys.base_prefix), Path("/usr/local"), Path("/usr")]


def find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of an installed oneDNN with the v3 API (older ones are skipped), or
    raise :class:`BuildError`."""
    for p in _prefixes():
        inc = p / "include"
        if not (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file() or _major_version(inc) < 3:
            continue
        for lib in (p / "lib", p / "lib64", p / "lib" / "x86_64-linux-gnu"):
            if (lib / "libdnnl.so").exists():
                return inc, lib
    raise BuildError("oneDNN not found (install the cpu-fast extra: pip install 'jaxnet[cpu-fast]' "
                     "or make cpu-fast)")


def _major_version(inc: Path) -> int:
    try:
        for line in (inc / "oneapi" / "dnnl" / "dnnl_version.h").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[:2] == ["#define", "DNNL_VERSION_MAJOR"]:
                return int(parts[2])
    except (OSError, ValueError):
        pass
    return 0


def cpu_runtime(inc: Path) -> str:
    """oneDNN's CPU runtime from its ``dnnl_config.h``: "OMP", "TBB", "SYCL", "SEQ", ..."""
    for line in (inc / "oneapi" / "dnnl" / "dnnl_config.h").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["#define", "DNNL_CPU_RUNTIME"]:
            return parts[2].replace("DNNL_RUNTIME_", "")
    return "unknown"


def _compiler(check: bool = True) -> str:
    cxx = os.environ.get("CXX", "g++")
    if check and shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler: {cxx!r} is not on PATH (set CXX or install g++)")
    return cxx


def _command(cxx, inc, lib, ffi_inc, out) -> list[str]:
    return [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", f"-I{ffi_inc}", f"-I{inc}",
            str(SOURCE), "-o", str(out), f"-L{lib}", "-ldnnl",
            # RPATH (not RUNPATH): libdnnl's own dependencies (a SYCL build's libsycl, libtbb) live beside it
            f"-Wl,--disable-new-dtags,-rpath,{lib}"]


def cache_root() -> Path:
    base = os.environ.get("JAXNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jaxnet")
    return Path(base) / "onednn"


def library_path() -> Path:
    """Where the library for the current source, compiler and versions lives (built or not)."""
    import jax
    import jaxlib
    inc, lib = find_onednn()
    cxx = _compiler(check=False)      # a library built before is used even if the compiler is gone since
    h = hashlib.sha256(SOURCE.read_bytes())
    cmd = _command(cxx, inc, lib, jax.ffi.include_dir(), "out")
    h.update(" ".join(SOURCE.name if c == str(SOURCE) else c for c in cmd).encode())   # checkouts share it
    h.update(getattr(jaxlib, "__version__", "?").encode())
    h.update((inc / "oneapi" / "dnnl" / "dnnl_version.h").read_bytes())
    h.update(os.path.realpath(lib / "libdnnl.so").encode())
    return cache_root() / h.hexdigest()[:16] / LIB_NAME


def build(force: bool = False) -> Path:
    """Compile the kernel if it is not in the cache; return the library's path.

    Raises :class:`BuildError` (one line) when oneDNN or a compiler is missing or the compile fails.
    """
    import jax
    out = library_path()
    if out.is_file() and not force:
        return out
    inc, lib = find_onednn()
    cxx = _compiler()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot write the kernel's cache {out.parent}: {e.strerror or e} "
                         "(set JAXNET_CACHE_DIR)") from None
    try:
        res = subprocess.run(_command(cxx, inc, lib, jax.ffi.include_dir(), tmp), capture_output=True, text=True)
        if res.returncode != 0:
            err = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr[-300:])
            (out.parent / "build.log").write_text(res.stderr)
            raise BuildError(f"compiling {SOURCE.name} failed: {' '.join(err.split())} "
                             f"(full log: {out.parent / 'build.log'})")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


if __name__ == "__main__":  # pragma: no cover - the make target's entry point
    try:
        print(build(force="--force" in sys.argv))
    except BuildError as e:
        print(f"jaxnet.ops.onednn.build: {e}", file=sys.stderr)
        sys.exit(1)
