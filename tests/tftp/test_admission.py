"""Sources and token buckets of the TFTP request port (pure), and the progress label."""

from __future__ import annotations

import io

from rich.console import Console as RichConsole
from rich.progress import Progress
from rich.text import Text

from sockferry.cli.console import TransferProgress
from sockferry.tftp.admission import ReplyLimiter, TokenBucket, source_key


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"  # via a dual-stack socket
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("fe80::1%eth0") == "fe80::/64"


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=5, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert bucket.take(0.2) and not bucket.take(0.2)  # 0.2 s earn one token


def test_one_source_cannot_drain_the_shared_bucket() -> None:
    limiter = ReplyLimiter(rate=10, per_source_rate=2, now=0.0)
    assert sum(limiter.allow("192.0.2.1", 0.0) for _ in range(100)) == 2
    assert sum(limiter.allow(f"192.0.2.{i}", 0.0) for i in range(2, 20)) == 8


def test_a_progress_label_is_escaped_and_never_markup() -> None:
    bar = Progress(console=RichConsole(file=io.StringIO()))
    progress = TransferProgress(bar)
    progress.start("k", "evil\x1b[2J[link=file:///etc/passwd]x\n", 10)
    [task] = [t for t in bar.tasks if t.visible]  # the overall row waits for a second file
    # What the bar's markup column renders: the escaped name, literally.
    assert Text.from_markup(task.description).plain == \
        "evil\\x1b[2J[link=file:///etc/passwd]x\\n"
