"""MLLP framing (HL7 v2.5.1 Appendix C): blocks split anywhere, several per read, junk, size limit."""

from __future__ import annotations

import pytest

from integrations.hl7v2.errors import FramingError
from integrations.hl7v2.mllp import OVERSIZE_HEAD_BYTES, Frame, FrameReader, OversizeFrame, frame
from tests.integrations.hl7v2.listener_helpers import adt_a01, oru_r01


def test_blocks_split_at_every_byte_boundary() -> None:
    stream = frame(adt_a01("A1")) + b"\n" + frame(oru_r01("R1"))
    for cut in range(1, len(stream)):
        reader = FrameReader(4096)
        blocks = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert blocks == [Frame(adt_a01("A1")), Frame(oru_r01("R1"))], cut
        assert not reader.in_block


def test_block_state_tells_a_drop_mid_message() -> None:
    reader = FrameReader(4096)
    assert reader.feed(frame(adt_a01("A1"))[:40]) == []
    assert reader.in_block


@pytest.mark.parametrize(
    "stream",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        frame(b"MSH|x")[:-2] + b"\x0bMSH|y\x1c\r",  # a new block before the end of the last
    ],
)
def test_bytes_outside_a_block_cannot_be_framed(stream: bytes) -> None:
    with pytest.raises(FramingError):
        FrameReader(4096).feed(stream)


def test_an_oversized_block_is_discarded_as_it_arrives_keeping_its_head() -> None:
    limit = 1024
    big = oru_r01("BIG", observations=2000)
    assert len(big) > OVERSIZE_HEAD_BYTES
    reader = FrameReader(limit)
    stream = frame(big) + frame(adt_a01("NEXT"))
    blocks = []
    for start in range(0, len(stream), 700):
        blocks += reader.feed(stream[start : start + 700])
        assert len(reader._buffer) <= max(limit, OVERSIZE_HEAD_BYTES)  # bounded memory
    oversize, following = blocks
    assert isinstance(oversize, OversizeFrame)
    assert oversize.size == len(big) and big.startswith(oversize.head)
    assert following == Frame(adt_a01("NEXT"))
