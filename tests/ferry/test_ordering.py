"""PathOrder: same-path uploads released in request order (pure)."""

from __future__ import annotations

from sockferry.ferry.ordering import PathOrder


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
