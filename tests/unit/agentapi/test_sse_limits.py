"""SSEParser's cap on one frame: memory stays bounded whatever the stream sends, the
oversized frame is dropped (and reported), and the parser goes on with the next frame."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from sidecar.agentapi.sse import DEFAULT_MAX_FRAME, FrameTooLarge, SSEEvent, SSEParser

CAP = 1000


def feed(parser: SSEParser, *chunks: bytes) -> tuple[list[SSEEvent], int]:
    """Every frame the chunks produced (including those a FrameTooLarge carried) and
    how many times feed raised; checks the cap after every chunk."""
    out: list[SSEEvent] = []
    limits: list[int] = []
    for chunk in chunks:
        try:
            out.extend(parser.feed(chunk))
        except FrameTooLarge as exc:
            limits.append(exc.limit)
            out.extend(exc.frames)
        assert parser.buffered <= parser.max_frame
    assert all(limit == parser.max_frame for limit in limits)
    return out, len(limits)


def split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def frame(data: str, event: str = "message_update") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


BEFORE = frame("before")
AFTER = frame("after")
HUGE_LINE = frame("x" * CAP)


def test_line_over_the_cap_in_one_chunk_is_dropped_with_the_limit() -> None:
    parser = SSEParser(max_frame=CAP)
    with pytest.raises(FrameTooLarge) as caught:
        parser.feed(HUGE_LINE)
    assert caught.value.limit == CAP
    assert caught.value.frames == []
    assert str(CAP) in str(caught.value)
    assert parser.dropped == 1
    assert parser.buffered == 0


@pytest.mark.parametrize("size", [1, 7, 64, 999])
def test_line_over_the_cap_split_over_many_chunks_raises_once(size: int) -> None:
    parser = SSEParser(max_frame=CAP)
    got, raised = feed(parser, *split(BEFORE + HUGE_LINE + AFTER, size))
    assert raised == 1
    assert parser.dropped == 1
    assert got == [SSEEvent("message_update", "before"), SSEEvent("message_update", "after")]


def test_unterminated_line_is_dropped_before_its_end_arrives() -> None:
    # An endless line must not wait for its end to be dropped: memory is the point.
    parser = SSEParser(max_frame=CAP)
    parser.feed(b"event: message_update\ndata: ")
    raised = 0
    for _ in range(CAP // 100 + 2):
        try:
            parser.feed(b"x" * 100)
        except FrameTooLarge:
            raised += 1
        assert parser.buffered <= CAP
    assert raised == 1
    # Still inside the dropped line: whatever more comes costs nothing.
    for _ in range(100):
        assert parser.feed(b"y" * 1000) == []
        assert parser.buffered == 0
    assert parser.dropped == 1


@pytest.mark.parametrize("size", [None, 1, 50, 333])
def test_data_lines_accumulating_over_the_cap_drop_the_frame(size: int | None) -> None:
    # Each line is well under the cap; together they are ~3 times over it.
    lines = b"".join(b"data: " + b"z" * 50 + b"\n" for _ in range(30))
    blob = BEFORE + b"event: message_update\n" + lines + b"\n" + AFTER
    parser = SSEParser(max_frame=CAP)
    got, raised = feed(parser, *([blob] if size is None else split(blob, size)))
    assert raised == 1
    assert parser.dropped == 1
    assert got == [SSEEvent("message_update", "before"), SSEEvent("message_update", "after")]


def test_many_empty_data_lines_count_against_the_cap() -> None:
    # Each line is a Python object even when empty: a frame of them must hit the cap
    # long before it holds a million of them.
    parser = SSEParser(max_frame=CAP)
    _, raised = feed(parser, b"data:\n" * 1000)
    assert raised == 1


def test_data_field_without_space_counts_too() -> None:
    parser = SSEParser(max_frame=CAP)
    got, raised = feed(parser, b"data:" + b"x" * CAP + b"\n\n" + AFTER)
    assert raised == 1
    assert got == [SSEEvent("message_update", "after")]


@pytest.mark.parametrize("line", [b": comment ", b"event: ", b"id: ", b"retry: "])
def test_any_long_line_counts_whole_or_pending(line: bytes) -> None:
    blob = line + b"c" * CAP + b"\ndata: x\n\n" + AFTER
    for size in (None, 100):
        parser = SSEParser(max_frame=CAP)
        got, _ = feed(parser, *([blob] if size is None else split(blob, size)))
        assert parser.dropped == 1, f"chunks of {size}"
        assert got == [SSEEvent("message_update", "after")]


def test_huge_comment_line_counts_while_pending() -> None:
    parser = SSEParser(max_frame=CAP)
    got, raised = feed(parser, *split(b":" + b"c" * 5 * CAP + b"\n\n" + AFTER, 100))
    assert raised == 1
    assert got == [SSEEvent("message_update", "after")]


def test_frames_before_and_after_in_the_same_chunk_are_carried_in_order() -> None:
    parser = SSEParser(max_frame=CAP)
    with pytest.raises(FrameTooLarge) as caught:
        parser.feed(BEFORE + HUGE_LINE + AFTER + b"data: open")
    assert caught.value.frames == [
        SSEEvent("message_update", "before"),
        SSEEvent("message_update", "after"),
    ]
    # The frame after the dropped one goes on normally in the next chunk.
    assert parser.feed(b" frame\n\n") == [SSEEvent("message", "open frame")]


def test_oversized_frame_with_more_lines_after_the_big_one_is_skipped_whole() -> None:
    parser = SSEParser(max_frame=CAP)
    rest = b"data: more of the dropped frame\nevent: not_this\n: comment\n\n"
    got, raised = feed(parser, b"event: a\ndata: " + b"x" * CAP + b"\n" + rest + AFTER)
    assert raised == 1
    assert got == [SSEEvent("message_update", "after")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_recovery_at_every_split_point(eol: bytes) -> None:
    """Wherever the chunks break (inside the blank line that ends the dropped frame, a
    CRLF, the next frame), the same frames come out and exactly one drop is reported."""
    blob = (BEFORE + b"data: " + b"x" * (CAP + 10) + b"\n\n" + AFTER + frame("last")).replace(
        b"\n", eol
    )
    expected = [
        SSEEvent("message_update", "before"),
        SSEEvent("message_update", "after"),
        SSEEvent("message_update", "last"),
    ]
    for i in range(0, len(blob) + 1):
        for j in (i, i + 1, i + 2, len(blob)):
            parser = SSEParser(max_frame=CAP)
            got, raised = feed(parser, blob[:i], blob[i:j], blob[j:])
            assert (got, raised) == (expected, 1), f"split at {i}, {j}"


def test_blank_line_split_across_chunks_while_discarding() -> None:
    parser = SSEParser(max_frame=CAP)
    _, raised = feed(parser, b"data: " + b"x" * (2 * CAP))
    assert raised == 1
    assert parser.feed(b"xx\n") == []
    assert parser.feed(b"data: still the dropped frame\n") == []
    assert parser.feed(b"\n") == []  # the blank line ends the dropped frame
    assert parser.feed(AFTER) == [SSEEvent("message_update", "after")]


def test_a_second_oversized_frame_is_dropped_too() -> None:
    parser = SSEParser(max_frame=CAP)
    got, raised = feed(parser, HUGE_LINE, BEFORE, *split(HUGE_LINE, 300), AFTER)
    assert raised == 2
    assert parser.dropped == 2
    assert got == [SSEEvent("message_update", "before"), SSEEvent("message_update", "after")]


def test_frame_just_under_the_cap_passes() -> None:
    # A frame's cost: its data lines' lengths plus a fixed allowance per line.
    parser = SSEParser(max_frame=CAP)
    value = "v" * (CAP - 200)
    got, raised = feed(parser, *split(frame(value), 33))
    assert (got, raised) == ([SSEEvent("message_update", value)], 0)


def test_ten_megabyte_line_fits_the_default_cap() -> None:
    # A message of an agent that dumped a big file is real; 10 MB lines must keep working.
    assert DEFAULT_MAX_FRAME >= 16 * 1024 * 1024
    value = ("0123456789abcdef€" * 600_000)[:10_000_000]
    blob = frame(value) + AFTER
    for chunks in ([blob], split(blob, 64 * 1024)):
        parser = SSEParser()
        got, raised = feed(parser, *chunks)
        assert raised == 0
        assert [e.data for e in got] == [value, "after"]


def test_a_line_trickling_in_tiny_chunks_costs_no_object_per_chunk() -> None:
    # Pieces of a pending line are merged: two characters per chunk must not cost a
    # ~60-byte string object each (single characters are cached by Python, so two).
    parser = SSEParser()
    parser.feed(b"data: ")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50_000):
            parser.feed(b"xy")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert parser.buffered == 100_006
    assert grown < 500_000, f"{grown} bytes for a 100,000-character pending line"
    assert parser.feed(b"\n\n") == [SSEEvent("message", "xy" * 50_000)]


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        SSEParser(max_frame=0)


def _random_stream(rng: random.Random) -> bytes:
    parts: list[bytes] = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(frame("v" * rng.randint(0, 2 * CAP)))
        elif kind < 0.6:
            lines = b"".join(b"data: " + b"w" * rng.randint(0, 120) + b"\n" for _ in range(12))
            parts.append(lines + b"\n")
        elif kind < 0.8:
            parts.append(b": " + b"c" * rng.randint(0, 2 * CAP) + b"\n")
        else:
            parts.append(frame("small", event="status_change"))
    eol = rng.choice([b"\n", b"\r\n", b"\r"])
    return b"".join(parts).replace(b"\n", eol)


def test_random_streams_drop_the_same_frames_however_they_are_chunked() -> None:
    rng = random.Random(20241201)
    for _ in range(300):
        blob = _random_stream(rng)
        whole = SSEParser(max_frame=CAP)
        expected, _ = feed(whole, blob)
        cuts = sorted(rng.sample(range(len(blob) + 1), k=min(len(blob) + 1, rng.randint(1, 40))))
        chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        parser = SSEParser(max_frame=CAP)
        got, _ = feed(parser, *chunks)
        assert (got, parser.dropped) == (expected, whole.dropped), blob[:200]
        # Nothing over the cap ever came out.
        assert all(len(e.data) <= CAP for e in got)
