from __future__ import annotations

import json

import pytest

from sidecar.agentapi.sse import SSEEvent, SSEParser


def feed_all(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def feed_split(blob: bytes, size: int) -> list[SSEEvent]:
    return feed_all(*(blob[i : i + size] for i in range(0, len(blob), size)))


AGENTAPI_FRAME = (
    b"event: message_update\n"
    b'data: {"id":3,"role":"agent","message":"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80",'
    b'"time":"2024-05-01T12:00:00.123456789Z"}\n'
    b"\n"
)


def test_single_agentapi_frame() -> None:
    (event,) = feed_all(AGENTAPI_FRAME)
    assert event.event == "message_update"
    assert json.loads(event.data)["message"] == "héllo € 😀"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(eol: bytes) -> None:
    blob = eol.join([b"event: a", b"data: one", b"data: two", b"", b"data: three", b"", b""])
    assert feed_all(blob) == [SSEEvent("a", "one\ntwo"), SSEEvent("message", "three")]


def test_mixed_line_endings_in_one_stream() -> None:
    blob = b"data: a\rdata: b\r\ndata: c\n\r\n\r"
    assert feed_all(blob) == [SSEEvent("message", "a\nb\nc")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # If the LF after a chunk-final CR counted as its own line, it would be a blank line
    # and dispatch "a" before "b" arrived.
    assert feed_all(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SSEEvent("message", "a\nb")]


def test_cr_at_chunk_end_then_blank_line_dispatches() -> None:
    # CR ends the line, the next chunk's CR (not LF) is a blank line: dispatch.
    assert feed_all(b"data: a\r", b"\r") == [SSEEvent("message", "a")]


def test_cr_at_chunk_end_followed_by_empty_and_multibyte_chunks() -> None:
    # An empty chunk, or one holding only half a UTF-8 character, must not lose the
    # pending CR: the LF that eventually follows still completes the CRLF.
    events = feed_all(b"data: a\r", b"", b"\ndata: \xe2", b"\x82\xac\r", b"", b"\n", b"\r\n")
    assert events == [SSEEvent("message", "a\n€")]


def test_cr_then_multibyte_start_in_same_chunk() -> None:
    events = feed_all(b"data: a\r\xe2", b"\x82\xac: ignored\n\n")
    assert events == [SSEEvent("message", "a")]


def test_comments_are_ignored() -> None:
    blob = b": hello\n:\ndata: x\n: between\ndata: y\n\n: trailing comment\n\n"
    assert feed_all(blob) == [SSEEvent("message", "x\ny")]


def test_comment_only_block_dispatches_nothing() -> None:
    assert feed_all(b": keepalive\n\n") == []


def test_multiline_data_joined_with_lf() -> None:
    assert feed_all(b"data: line 1\ndata: line 2\ndata:\ndata: line 4\n\n") == [
        SSEEvent("message", "line 1\nline 2\n\nline 4")
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"data: x", "x"),
        (b"data:x", "x"),
        (b"data:  x", " x"),  # only ONE leading space is removed
        (b"data: ", ""),
        (b"data:", ""),
        (b"data", ""),  # a field name without a colon has an empty value
        (b"data:x: y", "x: y"),  # only the first colon splits
        (b"data: \tx ", "\tx "),
    ],
)
def test_data_value_leading_space(line: bytes, expected: str) -> None:
    assert feed_all(line + b"\n\n") == [SSEEvent("message", expected)]


def test_event_value_strips_one_space_and_no_space() -> None:
    assert feed_all(b"event:a\ndata: 1\n\nevent:  b\ndata: 2\n\n") == [
        SSEEvent("a", "1"),
        SSEEvent(" b", "2"),
    ]


def test_unknown_fields_are_ignored() -> None:
    blob = (
        b"id: 42\nretry: 1000\nfoo: bar\nDATA: upper\nEvent: upper\n"
        b"data : space before colon\nevent: real\ndata: kept\n\n"
    )
    assert feed_all(blob) == [SSEEvent("real", "kept")]


def test_empty_data_line_dispatches_empty_string() -> None:
    # Per the standard a data buffer of one empty line is "\n", not empty: it dispatches.
    assert feed_all(b"event: e\ndata:\n\n") == [SSEEvent("e", "")]


def test_blank_line_without_data_dispatches_nothing() -> None:
    assert feed_all(b"\n\n\n\r\n\r") == []
    assert feed_all(b"event: status_change\n\n") == []
    assert feed_all(b"id: 7\nretry: 5\n\n") == []


def test_event_type_resets_after_dispatch() -> None:
    blob = b"event: status_change\ndata: 1\n\ndata: 2\n\n"
    assert feed_all(blob) == [SSEEvent("status_change", "1"), SSEEvent("message", "2")]


def test_event_type_resets_after_blank_line_without_data() -> None:
    # The standard resets the type buffer even when nothing is dispatched.
    assert feed_all(b"event: lost\n\ndata: x\n\n") == [SSEEvent("message", "x")]


def test_last_event_field_wins() -> None:
    assert feed_all(b"event: a\nevent: b\ndata: x\n\n") == [SSEEvent("b", "x")]


def test_incomplete_event_at_end_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: a\ndata: partial\n") == []
    assert parser.feed(b"data: more") == []


def test_leading_bom_is_skipped() -> None:
    assert feed_all(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("message", "x")]


def test_leading_bom_split_across_chunks_is_skipped() -> None:
    assert feed_all(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [SSEEvent("message", "x")]


def test_bom_only_skipped_at_stream_start() -> None:
    # A BOM at the start of a later line is part of the field name: unknown, ignored.
    blob = b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: \xef\xbb\xbfc\n\n"
    assert feed_all(blob) == [SSEEvent("message", "a"), SSEEvent("message", "\ufeffc")]


def test_only_one_bom_is_skipped() -> None:
    # Two BOMs: the second is part of the first line's field name, so that line is unknown.
    assert feed_all(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [SSEEvent("message", "y")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert feed_all(b"data: a\xffb\n\ndata: c\n\n") == [
        SSEEvent("message", "a\ufffdb"),
        SSEEvent("message", "c"),
    ]


def test_multibyte_character_split_across_chunks() -> None:
    assert feed_all(b"data: \xf0\x9f", b"\x98", b"\x80!\n\n") == [SSEEvent("message", "😀!")]


SPLIT_STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    + AGENTAPI_FRAME
    + b'event: status_change\r\ndata: {"status":"stable"}\r\n\r\n'
    + b"id: 9\rretry: 10\rdata:first\rdata:  second\r\r"
    + b"event: agent_error\ndata: \xe2\x82\xac\n\n"
    + b"event: dropped\n\n"
    + b"data: tail\r\n\r\n"
)


def test_stream_split_at_every_byte_position_matches_unsplit() -> None:
    expected = feed_all(SPLIT_STREAM)
    assert [e.event for e in expected] == [
        "message_update",
        "status_change",
        "message",
        "agent_error",
        "message",
    ]
    assert expected[2].data == "first\n second"
    for i in range(len(SPLIT_STREAM) + 1):
        assert feed_all(SPLIT_STREAM[:i], SPLIT_STREAM[i:]) == expected, f"split at {i}"


def test_stream_split_at_every_pair_of_positions_near_crlf() -> None:
    blob = b"data: a\r\n\r\ndata: b\r\r\ndata: c\n\r\n"
    expected = feed_all(blob)
    assert expected == [
        SSEEvent("message", "a"),
        SSEEvent("message", "b"),
        SSEEvent("message", "c"),
    ]
    for i in range(len(blob) + 1):
        for j in range(i, len(blob) + 1):
            assert feed_all(blob[:i], blob[i:j], blob[j:]) == expected, f"split at {i},{j}"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_stream_fed_in_tiny_chunks(size: int) -> None:
    assert feed_split(SPLIT_STREAM, size) == feed_all(SPLIT_STREAM)


def test_one_megabyte_data_line_in_4k_chunks() -> None:
    payload = ("0123456789abcdef€" * 61_681)[:1_000_000]
    blob = b"event: message_update\ndata: " + payload.encode() + b"\n\ndata: next\n\n"
    assert len(blob) > 1_000_000
    events = feed_split(blob, 4096)
    assert events == [SSEEvent("message_update", payload), SSEEvent("message", "next")]


def test_many_events_in_one_chunk_and_chunk_boundaries_mid_frame() -> None:
    frames = b"".join(
        b"event: message_update\ndata: " + json.dumps({"id": i}).encode() + b"\n\n"
        for i in range(1000)
    )
    for size in (len(frames), 65_536, 100, 13):
        events = feed_split(frames, size)
        assert [json.loads(e.data)["id"] for e in events] == list(range(1000))
        assert {e.event for e in events} == {"message_update"}


def test_events_are_returned_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n") == []
    assert parser.feed(b"\ndata: 2") == [SSEEvent("message", "1")]
    assert parser.feed(b"\n\n") == [SSEEvent("message", "2")]


def test_sse_event_is_frozen() -> None:
    event = SSEEvent("e", "d")
    with pytest.raises(AttributeError):
        # The assignment is the point: mypy rightly refuses it on a frozen dataclass.
        event.data = "x"  # type: ignore[misc]
