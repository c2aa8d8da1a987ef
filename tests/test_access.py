"""--allow / --deny rules (pure): parsing, deny wins, IPv4-mapped peers, no address."""

from __future__ import annotations

import pytest

from sockferry.access import AccessRules, RateLimitedLog, host_of, parse_network
from sockferry.errors import UsageError


def test_no_rules_admit_everyone() -> None:
    rules = AccessRules.parse(None, None)
    assert not rules.restricts
    assert rules.admits("203.0.113.9") and rules.admits("2001:db8::1")
    assert rules.describe() == "everyone"


def test_allow_admits_only_its_networks() -> None:
    rules = AccessRules.parse(["192.0.2.0/24", "2001:db8::/32"], None)
    assert rules.admits("192.0.2.200") and rules.admits("2001:db8:5::7")
    assert not rules.admits("192.0.3.1") and not rules.admits("2001:db9::1")
    assert rules.describe() == "allow 192.0.2.0/24, 2001:db8::/32"


def test_deny_wins_over_allow_whatever_the_order() -> None:
    rules = AccessRules.parse(["10.0.0.0/8"], ["10.1.0.0/16"])
    assert rules.admits("10.2.3.4")
    assert not rules.admits("10.1.2.3")
    only_deny = AccessRules.parse(None, ["10.1.0.0/16", "::1"])
    assert only_deny.admits("10.2.3.4") and not only_deny.admits("10.1.9.9")
    assert not only_deny.admits("::1") and only_deny.admits("::2")


def test_ipv4_mapped_peers_are_judged_as_ipv4() -> None:
    """What a dual-stack socket reports for an IPv4 client."""
    rules = AccessRules.parse(["127.0.0.0/8"], ["127.0.0.2"])
    assert rules.admits("::ffff:127.0.0.1")
    assert not rules.admits("::ffff:127.0.0.2")
    assert not rules.admits("::ffff:192.0.2.1")
    # A mapped network on the command line means the IPv4 network it carries.
    assert parse_network("::ffff:192.0.2.0/120") == parse_network("192.0.2.0/24")
    assert AccessRules.parse(["::ffff:192.0.2.0/120"], None).admits("192.0.2.5")


def test_scope_ids_are_ignored() -> None:
    assert not AccessRules.parse(None, ["fe80::/10"]).admits("fe80::1%eth0")


def test_unix_peers_are_not_judged_and_unknown_peers_fail_closed() -> None:
    """AF_UNIX peers: the rules do not apply (documented); no address at all: refused
    once anything is restricted."""
    rules = AccessRules.parse(["192.0.2.0/24"], ["0.0.0.0/0", "::/0"])
    assert rules.admits_peer("") and rules.admits_peer("/run/x.sock")
    assert not rules.admits_peer(("192.0.2.1", 5)) and not rules.admits_peer(None)
    assert AccessRules().admits_peer(None)
    assert AccessRules.parse(["192.0.2.0/24"], None).admits_peer(("192.0.2.1", 5, 0, 0))
    assert host_of(("192.0.2.1", 5)) == "192.0.2.1" and host_of(None) == "an unknown address"


@pytest.mark.parametrize("text", ["192.0.2.1/24", "300.1.1.1", "example.com", "10.0.0.0/33",
                                  ""])
def test_bad_networks_are_usage_errors_naming_the_text(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_network(text)
    assert f"'{text}' is not a network" in str(caught.value)


def test_rate_limited_log_counts_what_it_leaves_out() -> None:
    limit = RateLimitedLog(per_second=2)
    assert [limit.allow(100.0)[0] for _ in range(5)] == [True, True, False, False, False]
    assert limit.allow(101.5) == (True, 3)  # the next window reports the three left out
    assert limit.allow(101.6) == (True, 0)
