"""PathOrder: same-path uploads released in request order (pure)."""

from __future__ import annotations

import pytest

from sockferry.ferry.ordering import PathOrder
from sockferry.ferry.uploads import order_key


def test_a_later_upload_waits_for_an_earlier_one_of_its_path() -> None:
    released: list[str] = []
    order: PathOrder[str] = PathOrder(released.append)
    order.opened(1, "a")
    order.opened(2, "a")
    order.opened(3, "b")
    order.verified(2, "a2")  # 1 is still open
    order.verified(3, "b3")  # another path: at once
    assert released == ["b3"]
    order.verified(1, "a1")
    assert released == ["b3", "a1", "a2"]
    assert order.held() == []


def test_a_refused_upload_lets_the_next_go() -> None:
    released: list[str] = []
    order: PathOrder[str] = PathOrder(released.append)
    for request in (1, 2, 3):
        order.opened(request, "p")
    order.verified(3, "p3")
    order.verified(2, "p2")
    assert released == []
    order.ended(1)  # refused or cancelled
    assert released == ["p2", "p3"]


def test_a_refusal_in_the_middle_keeps_the_rest_in_order() -> None:
    released: list[str] = []
    order: PathOrder[str] = PathOrder(released.append)
    for request in (1, 2, 3):
        order.opened(request, "p")
    order.verified(3, "p3")
    order.ended(2)  # not the head: nothing moves yet
    assert released == []
    order.verified(1, "p1")
    assert released == ["p1", "p3"]


def test_untracked_requests_and_clear() -> None:
    released: list[str] = []
    order: PathOrder[str] = PathOrder(released.append)
    order.verified(9, "x")  # never opened (e.g. refused at once): released
    order.ended(9)
    order.opened(1, "p")
    order.opened(2, "p")
    order.verified(2, "p2")
    assert order.held() == ["p2"]
    order.clear()
    assert order.held() == []


def test_opened_verified_waits_only_behind_an_open_put_of_its_path() -> None:
    released: list[str] = []
    order: PathOrder[str] = PathOrder(released.append)
    order.opened_verified(1, "p", "p1")  # nothing open: at once, nothing kept
    assert released == ["p1"] and order.held() == []
    order.opened(2, "q")
    order.opened_verified(3, "q", "q3")  # behind the open 2
    assert released == ["p1"]
    order.verified(2, "q2")
    assert released == ["p1", "q2", "q3"]


@pytest.mark.parametrize("path", ["a/b", "a//b", "./a/b", "a/./b", "a/b/", "a/b/."])
def test_order_keys_name_one_path_one_way(path: str) -> None:
    assert order_key(path) == "a/b"
