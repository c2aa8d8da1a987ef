"""Immutable records, built quickly: what ``@dataclass(frozen=True, slots=True)`` gives
the frames and events of the protocol cores, at a fraction of its cost.

The cores define some forty such classes, and every command imports them: made by
``dataclasses`` they cost ~1.3 ms each to create (one ``exec`` per generated method) —
a quarter of a one-file ``send``'s start-up — and a frozen ``__init__`` then pays an
``object.__setattr__`` per field on every frame and event.  ``record`` generates the
same methods with one ``exec`` per class and assigns fields through the slot
descriptors.  Fields are the class's annotations, in order; a class attribute of the
same name is the field's default.  Type checkers treat it as a frozen dataclass
(PEP 681).
"""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

_TEMPLATE = '''
def __init__(self, {params}):
{assign}
def __repr__(self):
    return f"{name}({fields_repr})"
def __eq__(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return {tuple_self} == {tuple_other}
def __hash__(self):
    return hash({tuple_self})
'''


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` an immutable record with slots, ``__init__``, ``__repr__``, ``__eq__``,
    ``__hash__`` and ``__match_args__`` (positional class patterns work)."""
    names = list(inspect.get_annotations(cls))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    namespace = {k: v for k, v in cls.__dict__.items()
                 if k not in defaults and k not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = tuple(names)
    namespace["__match_args__"] = tuple(names)
    metaclass: Any = type(cls)
    new: Any = metaclass(cls.__name__, cls.__bases__, namespace)
    scope: dict[str, Any] = {f"_set_{n}": getattr(new, n).__set__ for n in names}
    scope.update({f"_default_{n}": value for n, value in defaults.items()})
    source = _TEMPLATE.format(
        name=cls.__name__,
        params=", ".join(f"{n}=_default_{n}" if n in defaults else n for n in names),
        assign="".join(f"    _set_{n}(self, {n})\n" for n in names) or "    pass\n",
        fields_repr=", ".join(f"{n}={{self.{n}!r}}" for n in names),
        tuple_self="(" + "".join(f"self.{n}, " for n in names) + ")",
        tuple_other="(" + "".join(f"other.{n}, " for n in names) + ")")
    exec(source, scope)  # noqa: S102 - the source is built above from the class's own names
    for method in ("__init__", "__repr__", "__eq__", "__hash__"):
        function = scope[method]
        function.__qualname__ = f"{cls.__qualname__}.{method}"
        setattr(new, method, function)
    new.__setattr__ = _frozen
    new.__delattr__ = _frozen
    new.__qualname__ = cls.__qualname__
    new.__module__ = cls.__module__
    new.__doc__ = cls.__doc__
    result: type[T] = new
    return result


def _frozen(self: object, name: str, *args: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field '{name}' of {type(self).__name__}")


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with some fields changed."""
    cls = type(obj)
    values = {n: getattr(obj, n) for n in cls.__match_args__}  # type: ignore[attr-defined]
    values.update(changes)
    result: T = cls(**values)
    return result
