"""Checkpoints: one self-checking file per training state, written atomically.

File layout (all integers little-endian)::

    b"JAXNETCK"                    8 bytes magic
    format version                 uint32 (currently 1)
    header length H                uint32
    SHA-256 of the header          32 bytes
    header                         H bytes of UTF-8 JSON: payload_length, payload_sha256,
                                   payload encoding, key types, jax version
    payload                        msgpack (flax.serialization) of
                                   {"arrays": {path: ndarray}, "config": JSON text, "extra": tree}

Every byte is covered by a check (magic, version, the two checksums, the lengths), so a
truncated or corrupted file raises :class:`CheckpointError` naming it before anything is
restored. ``arrays`` maps each leaf's ``jax.tree_util.keystr`` path in the
:class:`~jaxnet.train.state.TrainState` (e.g. ``.params['fc1']['w']``) to its value; typed
PRNG keys are stored as their ``jax.random.key_data``. Loading restores into the structure
of a target state and, where the structures differ, lists the missing and unexpected paths
and the shape or dtype mismatches.

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then
``os.replace``'d over the destination: a crash leaves either the old file or the new one,
never a mix. Temporary files are named ``.<name>.tmp-<pid>-*``: one left by a writer that was
killed is ignored by readers and deleted by the next save once its pid is no longer running.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct as _struct
import tempfile
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.train.runfiles import remove_stale_temp_files, temp_prefix
from jaxnet.train.state import TrainState

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "FORMAT_VERSION"]

MAGIC = b"JAXNETCK"
FORMAT_VERSION = 1
_PREFIX = _struct.Struct("<8sII32s")  # magic, version, header length, header sha256
_MAX_LISTED = 20


class CheckpointError(Exception):
    """A checkpoint file is unreadable, corrupted, truncated, or does not fit the target."""


def _serialization():
    """``flax.serialization`` (msgpack), imported on first use: ``import flax`` imports
    ``flax.linen`` (0.1-0.2 s), which ``import jaxnet.train`` should not pay for."""
    from flax import serialization

    from jaxnet.train import state as _state
    _state._register_flax_serialization(serialization)
    return serialization


def _is_key(a: Any) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _flatten(tree: Any) -> tuple[dict[str, Any], Any, list[str]]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    if len(set(paths)) != len(paths):  # pragma: no cover - keystr is injective for dict/attr/index trees
        raise CheckpointError("train state has leaves with the same path; cannot name them uniquely")
    return dict(zip(paths, (leaf for _, leaf in leaves))), treedef, paths


def _to_host(leaf: Any) -> tuple[np.ndarray, Optional[str]]:
    if _is_key(leaf):
        return np.asarray(jax.random.key_data(leaf)), str(jax.random.key_impl(leaf))
    return np.asarray(jax.device_get(leaf)), None


def _write(f, data: bytes) -> None:
    """One write of the checkpoint file (a seam for tests simulating a crash)."""
    f.write(data)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike,
    train_state: TrainState,
    *,
    config: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> str:
    """Write ``train_state`` (step, params, state, opt_state, key) to ``path`` atomically.

    config: a JSON-serialisable dict (model and run settings), returned by :func:`load_checkpoint`.
    extra: a dict of anything msgpack can hold: nested dicts/lists of numpy or jax arrays,
      numbers, strings, None (e.g. history, best params). Returns the path written.
    Raises TypeError if config is not JSON-serialisable or extra not serialisable.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        config_text = json.dumps({} if config is None else config, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: config must be JSON-serialisable: {e}") from e

    flat, _, paths = _flatten(train_state)
    arrays, key_impls = {}, {}
    for p in paths:
        arrays[p], impl = _to_host(flat[p])
        if impl is not None:
            key_impls[p] = impl
    extra_host = jax.tree.map(lambda a: np.asarray(jax.device_get(a)) if isinstance(a, jax.Array) else a,
                              {} if extra is None else extra)
    try:
        payload = _serialization().msgpack_serialize(
            {"arrays": arrays, "config": config_text, "extra": extra_host}
        )
    except Exception as e:
        raise TypeError(f"save_checkpoint: cannot serialise the checkpoint for {path!r}: {e}") from e
    header = json.dumps(
        {
            "payload_length": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_encoding": "flax-msgpack",
            "key_impls": key_impls,
            "jax_version": jax.__version__,
        },
        sort_keys=True,
    ).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest())

    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, prefix)
            _write(f, header)
            _write(f, payload)
            f.flush()
            os.fsync(f.fileno())
        try:  # mkstemp makes the file 0600; keep an existing checkpoint's mode, else 0644
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        except OSError:  # pragma: no cover
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict, dict, dict]:
    """Read and verify a checkpoint file without a target.

    Returns ``(arrays, config, extra, header)``: arrays maps leaf paths to numpy arrays
    (typed keys as their key data). Raises :class:`CheckpointError` naming the file if it
    is missing, truncated, corrupted, or of another format or version.
    """
    path = os.fspath(path)

    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path!r}: {why}")

    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from e
    if len(blob) < _PREFIX.size:
        raise fail(f"truncated: {len(blob)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len, header_sha = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise fail(f"not a jaxnet checkpoint (magic {magic!r}, expected {MAGIC!r}) or corrupted")
    if version != FORMAT_VERSION:
        raise fail(f"format version {version} is not supported (this jaxnet reads version {FORMAT_VERSION}) or the file is corrupted")
    header_end = _PREFIX.size + header_len
    if header_end > len(blob):
        raise fail(f"truncated: header needs {header_end} bytes, file has {len(blob)}")
    header_bytes = blob[_PREFIX.size:header_end]
    if hashlib.sha256(header_bytes).digest() != header_sha:
        raise fail("header checksum mismatch: the file is corrupted")
    try:
        header = json.loads(header_bytes)
        length, digest = int(header["payload_length"]), str(header["payload_sha256"])
    except (ValueError, KeyError, TypeError) as e:  # pragma: no cover - guarded by the checksum
        raise fail(f"unreadable header ({e})") from e
    payload = blob[header_end:]
    if len(payload) != length:
        raise fail(
            f"truncated or padded: payload is {len(payload)} bytes, the header says {length}"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise fail("payload checksum (SHA-256) mismatch: the file is corrupted")
    try:
        content = _serialization().msgpack_restore(payload)
        arrays, config = content["arrays"], json.loads(content["config"])
        extra = content["extra"]
    except Exception as e:  # pragma: no cover - guarded by the checksum
        raise fail(f"unreadable payload ({e})") from e
    return arrays, config, extra, header


def _describe_mismatch(target_flat: dict, loaded: dict) -> list[str]:
    problems = []
    missing = [p for p in target_flat if p not in loaded]
    unexpected = [p for p in loaded if p not in target_flat]
    for p in missing:
        problems.append(f"missing from the checkpoint: {p} (target shape {tuple(np.shape(_key_data(target_flat[p])))})")
    for p in unexpected:
        problems.append(f"unexpected in the checkpoint: {p} (shape {tuple(np.shape(loaded[p]))})")
    for p, t in target_flat.items():
        if p not in loaded:
            continue
        t_arr = _key_data(t)
        t_shape, l_shape = tuple(np.shape(t_arr)), tuple(np.shape(loaded[p]))
        t_dtype, l_dtype = np.dtype(jnp.result_type(t_arr)), np.asarray(loaded[p]).dtype
        if t_shape != l_shape:
            problems.append(f"shape mismatch at {p}: checkpoint {l_shape}, target {t_shape}")
        elif t_dtype != l_dtype:
            problems.append(f"dtype mismatch at {p}: checkpoint {l_dtype}, target {t_dtype}")
    return problems


def _key_data(a: Any) -> Any:
    return jax.random.key_data(a) if _is_key(a) else a


def load_checkpoint(path: str | os.PathLike, target: TrainState) -> tuple[TrainState, dict, dict]:
    """Restore a checkpoint into the structure of ``target`` (e.g. a fresh
    :func:`~jaxnet.train.state.create_train_state`).

    Returns ``(train_state, config, extra)``; arrays are jax arrays with the target's dtypes
    (typed keys re-wrapped with the target's key implementation).
    Raises :class:`CheckpointError` naming the file if it is unreadable, truncated or
    corrupted, or if its structure differs from ``target``'s: the message lists the missing
    and unexpected leaf paths and every shape or dtype mismatch with both values.
    """
    path = os.fspath(path)
    arrays, config, extra, _ = read_checkpoint(path)
    target_flat, treedef, paths = _flatten(target)
    problems = _describe_mismatch(target_flat, arrays)
    if problems:
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        raise CheckpointError(
            f"checkpoint {path!r} does not match the target train state "
            f"({len(problems)} difference{'s' if len(problems) != 1 else ''}):\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )
    leaves = []
    for p in paths:
        t = target_flat[p]
        if _is_key(t):
            leaves.append(jax.random.wrap_key_data(jnp.asarray(arrays[p]), impl=jax.random.key_impl(t)))
        else:
            leaves.append(jnp.asarray(arrays[p], dtype=jnp.result_type(t)))
    return jax.tree_util.tree_unflatten(treedef, leaves), config, extra
