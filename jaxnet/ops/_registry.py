"""The op table: one :class:`OpSpec` per op, registered by the family module that defines it.

A family module (``jaxnet/ops/activations.py``, ``conv.py``, ...) holds, for
each of its ops, the reference forward, the manual op (a ``jax.custom_vjp``
with a named, documented ``_<op>_bwd``), its NumPy oracle with the oracle's
fixed inputs, and a ``register(OpSpec(...))`` call that puts the op into this
table.  Everything else is derived from the table: ``jaxnet.ops`` and
``jaxnet.manual`` (the two namespaces), ``OP_NAMES``,
``jaxnet.registry.REGISTRY``, the gradient audit's cases, the float32 pass,
the oracle check (``jaxnet.gradcheck.oracles``) and :func:`op_table`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: ``kwargs`` go to the op, ``dims`` to the sampler."""
    kwargs: dict
    dims: dict

    @property
    def label(self) -> str:
        parts = [f"{k}={_short(v)}" for k, v in self.dims.items() if k not in self.kwargs]
        parts += [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        return " ".join(parts)


def case(dims: dict, **kwargs) -> Case:
    """``case({"x": (4, 5)}, slope=0.2)``: sampler dimensions, then the op's keyword arguments."""
    return Case(kwargs=kwargs, dims=dims)


@dataclasses.dataclass(frozen=True)
class OracleCase:
    """One fixed input for the oracle check: positional arguments (NumPy float64
    arrays, integer labels, a raw ``uint32`` PRNG key, ``None``) and keywords."""
    label: str
    args: tuple
    kwargs: dict


def oracle_case(label: str, *args, **kwargs) -> OracleCase:
    """``oracle_case("x=3x4 slope=0.3", x, slope=0.3)``: a label, the op's arguments, its keywords."""
    return OracleCase(label, tuple(args), kwargs)


def _short(v):
    if isinstance(v, tuple):
        return "x".join(str(i) for i in v) if all(isinstance(i, int) for i in v) else str(v).replace(" ", "")
    return str(v)


def _is_float_array(a) -> bool:
    """True for floating-point arrays; False for None, integer labels and PRNG keys (typed or raw)."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        return False
    return not jnp.issubdtype(dtype, jax.dtypes.prng_key) and jnp.issubdtype(dtype, jnp.floating)


def _jax_arrays(sample: Callable) -> Callable:
    """``sample`` with the NumPy arrays it returns made JAX arrays (the building blocks in
    ``_sampling.py`` draw with NumPy)."""
    if getattr(sample, "_returns_jax", False):
        return sample

    @functools.wraps(sample)
    def wrapped(key, dims, dtype):
        return tuple(jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in sample(key, dims, dtype))
    wrapped._returns_jax = True
    return wrapped


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """A registered op: its two paths and how the gradient audit exercises it.

    name: the public name (``jaxnet.ops.<name>``, ``jaxnet.manual.<name>``,
      ``jaxnet.functional.<name>``).
    reference: the reference forward (plain ``jax.numpy``; autodiff backward).
    manual: the manual op, same signature, hand-written backward (``custom_vjp``).
    sample: ``sample(key, dims, dtype) -> tuple`` of the op's positional arguments.
    cases: the configurations to sweep (:class:`Case`, built with :func:`case`).
    backward: the named hand backward function(s) (``_<op>_bwd``); the first
      line of each docstring is the op table's summary of the derivation.
    argnums: ``None`` (the default) differentiates every floating-point array
      argument; integer labels, PRNG keys and ``None`` are left out
      automatically.  A tuple narrows that set, and then ``argnums_reason``
      must say why.
    output: picks the differentiable array from the op's result (default: itself).
    numeric_tol: the threshold against finite differences.
    note: how the sampler avoids kinks and ties, or anything else the audit
      table should say.
    family: the op's family; defaults to the defining module's name.
    extremes: optional ``extremes(args, case) -> iterable of (label, args)``:
      the float32 pass's extreme inputs derived from one float32 sample of
      ``case`` (see ``jaxnet/gradcheck/extremes.py``).  ``None`` (the default)
      uses the override table there, else the generic rule (every floating
      input scaled by one factor, both signs).
    oracle: an independent NumPy float64 forward (same positional arguments and
      keywords as the op), written from the formula with loops or ``einsum``,
      never by calling the op.  The oracle check compares both paths with it.
    oracle_cases: the oracle check's small fixed inputs: a tuple of
      :class:`OracleCase` (build them with :func:`oracle_case`, or with the
      helpers of ``jaxnet/ops/_oracle_inputs.py``), or a zero-argument
      callable returning one (built on first use and kept, so importing the
      ops builds no arrays).  Every registered op needs an oracle and fixed
      inputs: ``tests/test_oracle.py`` fails, naming the op, for one without.
    """
    name: str
    reference: Callable
    manual: Callable
    sample: Callable
    cases: tuple
    backward: Any = ()
    argnums: Optional[tuple] = None
    argnums_reason: str = ""
    output: Optional[Callable] = None
    numeric_tol: float = 1e-6
    note: str = ""
    family: str = ""
    extremes: Optional[Callable] = None
    oracle: Optional[Callable] = None
    oracle_cases: Any = ()

    def __post_init__(self):
        object.__setattr__(self, "sample", _jax_arrays(self.sample))
        if not self.family:
            object.__setattr__(self, "family", self.reference.__module__.rsplit(".", 1)[-1])
        if callable(self.backward):
            object.__setattr__(self, "backward", (self.backward,))
        object.__setattr__(self, "backward", tuple(self.backward))
        object.__setattr__(self, "cases", tuple(self.cases))
        if self.argnums is not None:
            object.__setattr__(self, "argnums", tuple(self.argnums))
            if not self.argnums_reason:
                raise ValueError(f"OpSpec {self.name!r}: narrowing `argnums` needs an `argnums_reason`")
        if self.oracle is not None and not callable(self.oracle):
            raise TypeError(f"OpSpec {self.name!r}: `oracle` must be a NumPy forward, got {type(self.oracle).__name__}")
        if self.oracle is None and (callable(self.oracle_cases) or self.oracle_cases):
            raise ValueError(f"OpSpec {self.name!r}: `oracle_cases` without an `oracle` to compare them with")

    def call(self, impl: str, args, case: Case):
        """Run one path (``"manual"``, or the reference for anything else) on ``args``."""
        fn = self.manual if impl == "manual" else self.reference
        return fn(*args, **case.kwargs)

    def differentiable_output(self, result):
        return result if self.output is None else self.output(result)

    def of_differentiated(self, impl: str, args, case: Case, argnums) -> Callable:
        """One path as a function of ``args[argnums]`` only, the other arguments fixed:
        ``f(*args[argnums]) -> differentiable output``, ready for ``jax.vjp``."""
        def f(*d):
            full = list(args)
            for i, v in zip(argnums, d):
                full[i] = v
            return self.differentiable_output(self.call(impl, full, case))
        return f

    def differentiated(self, args) -> tuple:
        """Indices of ``args`` the audit differentiates: every floating-point array,
        narrowed to ``argnums`` when the spec sets it."""
        keep = range(len(args)) if self.argnums is None else self.argnums
        return tuple(i for i in keep if _is_float_array(args[i]))

    @functools.cached_property
    def diff_argnums(self) -> tuple:
        """:meth:`differentiated` for the first case's arguments (sampled once, on first use)."""
        c = self.cases[0]
        return self.differentiated(self.sample(jax.random.PRNGKey(0), c.dims, jnp.float32))

    def oracle_inputs(self) -> tuple:
        """The oracle check's fixed inputs: ``oracle_cases``, built on the first call if it is a
        callable (and kept); ``()`` for an op without them."""
        return self._built_oracle_inputs

    @functools.cached_property
    def _built_oracle_inputs(self) -> tuple:
        cases = tuple(self.oracle_cases() if callable(self.oracle_cases) else self.oracle_cases)
        for oc in cases:
            if not isinstance(oc, OracleCase):
                raise TypeError(f"OpSpec {self.name!r}: oracle_cases must be OracleCase (oracle_case(label, "
                                f"*args, **kwargs)), got {type(oc).__name__}")
        return cases

    def arg_names(self, argnums) -> list:
        """The reference's parameter names at ``argnums``."""
        params = list(inspect.signature(self.reference).parameters)
        return [params[i] if i < len(params) else f"arg{i}" for i in argnums]


_TABLE: dict[str, OpSpec] = {}

REGISTRY: Mapping[str, OpSpec] = types.MappingProxyType(_TABLE)
"""Every registered op by name, in registration order (a read-only view)."""


def register(spec: OpSpec) -> OpSpec:
    """Add ``spec`` to the op table and return it.  Each name registers once."""
    if not isinstance(spec, OpSpec):
        raise TypeError(f"register: expected an OpSpec, got {type(spec).__name__}")
    if spec.name in _TABLE:
        raise ValueError(f"register: op {spec.name!r} is already registered "
                         f"(by {_TABLE[spec.name].reference.__module__})")
    _TABLE[spec.name] = spec
    return spec


def get(name: str) -> OpSpec:
    """The spec of a registered op; a clear error lists the known names."""
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(_TABLE)}") from None


def all_cases(names=None) -> Iterator[tuple[OpSpec, Case]]:
    """Yield (spec, case) for every registered op (or the given names) and configuration."""
    for name in (names or list(_TABLE)):
        spec = get(name)
        for c in spec.cases:
            yield spec, c


def _summary(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0].strip().rstrip(".") if doc.strip() else ""


def op_table() -> str:
    """The registered ops as a Markdown table: op, family, differentiated inputs,
    the hand backward (first docstring line of each ``_<op>_bwd``) and notes."""
    def cell(text):
        return text.replace("|", "\\|")

    lines = ["| op | family | differentiated | hand backward | notes |",
             "| --- | --- | --- | --- | --- |"]
    for spec in _TABLE.values():
        diff = ", ".join(f"`{n}`" for n in spec.arg_names(spec.diff_argnums))
        if spec.argnums is not None:
            diff += f" (narrowed: {spec.argnums_reason})"
        backward = " / ".join(_summary(b) for b in spec.backward)
        lines.append(f"| `{spec.name}` | {spec.family} | {cell(diff)} | {cell(backward)} | {cell(spec.note)} |")
    return "\n".join(lines)
