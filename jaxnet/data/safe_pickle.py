"""Load the official CIFAR-10 python pickles without letting them run code.

`pickle.load` calls any global a file names (`os.system`, `builtins.eval`, ...). The
restricted unpickler here resolves only the globals that the official format (and
numpy arrays pickled with protocols 2 to 5) needs; anything else is refused by name
before it is called. After loading, every numpy array must have a numeric dtype.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from jaxnet.data.errors import DataError, DataNotFoundError

__all__ = ["load_numeric_pickle"]

_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles use it for bytes, and nothing more."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as (str, 'latin1'), got {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict:
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 module names
        table[core + ".multiarray", "_reconstruct"] = reconstruct
        table[core + ".multiarray", "scalar"] = scalar
        table[core + ".numeric", "_frombuffer"] = frombuffer
    return table


_ALLOWED = _allowed()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, fn: str, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official files are Python 2 pickles
        self.fn, self.path = fn, path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise DataError(
                f"{self.fn}: refused to load {self.path}: it asks for the global '{module}.{name}', "
                "which a CIFAR-10 batch file never contains"
            ) from None


def _check_numeric(fn: str, path: Path, obj) -> None:
    """Refuse any numpy array of non-numeric dtype inside obj (iterative; cycles allowed)."""
    stack, seen = [(obj, "the pickle")], set()
    while stack:
        item, where = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype.kind not in _NUMERIC_KINDS:
            raise DataError(f"{fn}: refused {path}: {where} is a numpy array of dtype {item.dtype}, not numeric")
        if isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((value, f"{where}[{key!r}]") for key, value in pairs)


def load_numeric_pickle(path, fn: str) -> dict:
    """The dict in pickle file `path`, holding only dict, list, tuple, str, bytes, int,
    float, numpy scalars and numpy arrays of numeric dtype.

    Raises DataError (message prefixed by `fn`, naming the file) for a missing, truncated
    or corrupt file, a global outside the allowed set, a non-numeric array, or a
    top-level object that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{fn}: missing file {path}")
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, fn, path).load()
    except DataError:
        raise
    except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ...
        raise DataError(f"{fn}: cannot unpickle {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{fn}: {path} holds a {type(obj).__name__}, expected a dict")
    _check_numeric(fn, path, obj)
    return obj
