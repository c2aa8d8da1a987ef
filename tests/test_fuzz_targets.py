"""The fuzz harnesses (fuzz/targets.py) over their seed corpus and bounded mutations of
it, so they keep working without atheris; fuzz/run is the real fuzzing."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sockferry.errors import MalformedPacket
from sockferry.ferry.parser import FrameParser
from sockferry.sctp import chunks
from sockferry.tftp import packets

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import seeds  # noqa: E402 - fuzz/ is not a package
import targets  # noqa: E402

TARGETS = sorted(targets.TARGETS)


def corpus(name: str) -> list[bytes]:
    """The committed seeds (fuzz/corpus/NAME/*, not what fuzzing found)."""
    return [p.read_bytes() for p in sorted((FUZZ / "corpus" / name).iterdir()) if p.is_file()]


def mutations(seed: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            choice = rng.randrange(4)
            position = rng.randrange(len(data) + 1)
            if choice == 0 and data:
                data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif choice == 1:
                data[position:position] = rng.randbytes(rng.randint(1, 8))
            elif choice == 2:
                del data[position : position + rng.randint(1, 16)]
            else:
                data[position:] = b""
        yield bytes(data)


def test_every_target_has_the_committed_seeds_of_the_generator() -> None:
    assert set(TARGETS) == set(seeds.SEEDS)
    for name, make in seeds.SEEDS.items():
        assert set(make()) <= set(corpus(name)), f"run python fuzz/seeds.py ({name})"


@pytest.mark.parametrize("name", TARGETS)
def test_target_over_its_corpus_and_mutations(name: str) -> None:
    target = targets.TARGETS[name]
    rng = random.Random(name)
    for seed in corpus(name):
        target(seed)
        for data in mutations(seed, rng, 200):
            target(data)
    target(b"")


@pytest.mark.parametrize(("decode", "seeds_of"), [
    (lambda data: list(FrameParser().feed(data[1:])), seeds.ferry_frames),
    (packets.decode_packet, seeds.tftp_packets),
    (chunks.decode_packet, seeds.sctp_packets),
])
def test_seeds_are_well_formed(decode: Callable[[bytes], object],
                               seeds_of: Callable[[], list[bytes]]) -> None:
    """Seeds reach deep into the decoders only if they decode."""
    for seed in seeds_of():
        decode(seed)


def test_a_target_lets_other_exceptions_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder raising anything but its malformed-input error is a finding."""
    def broken(data: bytes) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(packets, "decode_packet", broken)
    with pytest.raises(IndexError):
        targets.tftp_packets(b"\x00\x01x\x00octet\x00")

    def malformed(data: bytes) -> None:
        raise MalformedPacket("bad")

    monkeypatch.setattr(packets, "decode_packet", malformed)
    targets.tftp_packets(b"\x00\x01x\x00octet\x00")
