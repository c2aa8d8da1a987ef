"""Immutable records (sockferry.records): what the cores rely on of frozen dataclasses."""

from __future__ import annotations

import pytest

from sockferry.records import FrozenInstanceError, mutable_record, record, replace


@record
class Point:
    """A point."""

    x: int
    y: int = 0


@record
class Other:
    x: int
    y: int = 0


def test_fields_defaults_and_repr() -> None:
    p = Point(1)
    assert (p.x, p.y) == (1, 0)
    assert Point(1, 2) == Point(x=1, y=2)
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert Point.__doc__ == "A point."
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_records_are_immutable_and_have_no_dict() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.y  # type: ignore[misc]
    assert not hasattr(p, "__dict__")


def test_equality_and_hash_are_by_type_and_value() -> None:
    assert Point(1, 2) != Other(1, 2)  # same values, another kind of record
    assert Point(1, 2) != (1, 2)
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_class_patterns_and_replace() -> None:
    match Point(3, 4):
        case Point(x, y):
            assert (x, y) == (3, 4)
        case _:
            raise AssertionError("no match")
    moved = replace(Point(3, 4), y=9)
    assert moved == Point(3, 9) and isinstance(moved, Point)


@mutable_record
class Counter:
    name: str
    count: int = 0

    def bump(self) -> None:
        self.count += 1


def test_mutable_records_assign_compare_and_are_unhashable() -> None:
    c = Counter("a")
    c.bump()
    c.name = "b"
    assert (c.name, c.count) == ("b", 1)
    assert c == Counter("b", 1) and c != Counter("b", 2)
    assert repr(c) == "Counter(name='b', count=1)"
    assert not hasattr(c, "__dict__")
    with pytest.raises(AttributeError):
        c.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        hash(c)


def test_a_record_without_fields() -> None:
    @record
    class Empty:
        pass

    assert Empty() == Empty() and hash(Empty()) == hash(Empty())
    assert repr(Empty()) == "Empty()"
