"""Records, built quickly: what ``@dataclass(frozen=True, slots=True)`` gives the frames
and events of the protocol cores (and ``@dataclass(slots=True)`` the drivers'
bookkeeping), at a fraction of its cost.

The modules a command imports define some seventy such classes: made by
``dataclasses`` each costs ~1.3 ms to create on a fast machine (one ``exec`` per
generated method, and a second class for the slots) — a quarter of a one-file
``send``'s start-up — and a frozen ``__init__`` then pays an ``object.__setattr__`` per
field on every frame and event.  ``record`` compiles only ``__init__`` for each class,
assigning fields through the slot descriptors; ``__repr__``, ``__eq__`` and ``__hash__``
are shared and read the fields through one ``operator.attrgetter``.  Fields are the
class's annotations, in order; a class attribute of the same name is the field's
default.  Type checkers treat a record as a frozen dataclass and a ``mutable_record`` as
a plain one (PEP 681).
"""

from __future__ import annotations

import functools
import operator
import types
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

class FrozenInstanceError(AttributeError):
    """An assignment to a field of an immutable record (as ``dataclasses`` names it)."""


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` an immutable record with slots, ``__init__``, ``__repr__``, ``__eq__``,
    ``__hash__`` and ``__match_args__`` (positional class patterns work)."""
    return _build(cls, frozen=True)


@dataclass_transform()
def mutable_record(cls: type[T]) -> type[T]:
    """``record`` whose fields may be assigned (and so unhashable, as a dataclass with
    ``eq`` and without ``frozen``): the bookkeeping of drivers."""
    return _build(cls, frozen=False)


def _build(cls: type[T], frozen: bool) -> type[T]:
    # the class's own annotations, in order (inspect.get_annotations would cost an import)
    names = list(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    namespace = {k: v for k, v in cls.__dict__.items()
                 if k not in defaults and k not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = tuple(names)
    namespace["__match_args__"] = tuple(names)
    # only __init__ is compiled for each class (compiling is what costs at import); the
    # rest are shared and read the fields through one C-level getter
    namespace["_record_values"] = operator.attrgetter(*names) if names \
        else staticmethod(_no_values)
    namespace["__repr__"] = _repr
    namespace["__eq__"] = _eq
    namespace["__hash__"] = _hash if frozen else None
    if frozen:
        namespace["__setattr__"] = _frozen
        namespace["__delattr__"] = _frozen
    metaclass: Any = type(cls)
    new: Any = metaclass(cls.__name__, cls.__bases__, namespace)
    # The __init__ of every record with this many fields, renamed: no compiling per class.
    code = _init_code(len(names)).replace(co_varnames=("self", *names),
                                          co_qualname=f"{cls.__qualname__}.__init__")
    setters = {f"_s{i}": getattr(new, n).__set__ for i, n in enumerate(names)}
    init = types.FunctionType(code, setters, "__init__",
                              tuple(defaults[n] for n in names if n in defaults) or None)
    new.__init__ = init
    new.__qualname__ = cls.__qualname__
    new.__module__ = cls.__module__
    new.__doc__ = cls.__doc__
    result: type[T] = new
    return result


@functools.cache
def _init_code(arity: int) -> types.CodeType:
    """``__init__(self, _a0, ...)`` setting field i through the global ``_s{i}`` (the
    slot's setter); each record class gets a copy with its own names and setters."""
    params = "".join(f", _a{i}" for i in range(arity))
    body = "".join(f"    _s{i}(self, _a{i})\n" for i in range(arity)) or "    pass\n"
    scope: dict[str, Any] = {}
    exec(f"def __init__(self{params}):\n{body}", scope)  # noqa: S102 - built from numbers only
    code: types.CodeType = scope["__init__"].__code__
    return code


def _no_values(_record: object) -> tuple[()]:
    return ()


def _repr(self: Any) -> str:
    fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__match_args__)
    return f"{type(self).__name__}({fields})"


def _eq(self: Any, other: Any) -> Any:  # bool, or NotImplemented for other types
    if other.__class__ is not self.__class__:
        return NotImplemented
    return self._record_values(self) == other._record_values(other)


def _hash(self: Any) -> int:
    return hash(self._record_values(self))


def _frozen(self: object, name: str, *args: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field '{name}' of {type(self).__name__}")


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with some fields changed."""
    cls = type(obj)
    values = {n: getattr(obj, n) for n in cls.__match_args__}  # type: ignore[attr-defined]
    values.update(changes)
    result: T = cls(**values)
    return result
