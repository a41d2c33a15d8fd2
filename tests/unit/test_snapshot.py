from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import snapshot
from sidecar.models import CONTENT_MAX_CHARS, SNAPSHOT_MAX_BYTES, Message, Role, tail_of
from sidecar.snapshot import MARKER_FORMAT, MIN_MAX_BYTES, build, encode, marker

T = "2024-05-01T12:00:00.123456789Z"
MARKER_RE = re.compile(
    re.escape(MARKER_FORMAT).replace(re.escape("{cut}"), r"(?P<cut>[0-9]+)"), re.DOTALL
)


def msg(mid: int, content: str, role: Role = "agent", time: str = T) -> Message:
    return Message(id=mid, role=role, content=content, time=time)


def parse(body: bytes) -> list[Message]:
    obj = json.loads(body.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert isinstance(obj, dict)
    assert list(obj) == ["messages"]
    assert isinstance(obj["messages"], list)
    out = []
    for m in obj["messages"]:
        assert list(m) == ["id", "content", "role", "time"]
        out.append(Message(id=m["id"], role=m["role"], content=m["content"], time=m["time"]))
    return out


def split_marker(content: str) -> tuple[int, str] | None:
    """(cut, tail) when content starts with the marker, else None."""
    match = MARKER_RE.match(content)
    if match is None:
        return None
    return int(match["cut"]), content[match.end() :]


def overhead(mid: int = 1, role: Role = "agent", time: str = T) -> int:
    """Bytes of a one-message body with empty content."""
    return len(encode([msg(mid, "", role, time)]))


# --- encode ---------------------------------------------------------------------------


def test_encode_is_compact_agentapi_format() -> None:
    body = encode([msg(1, 'hi "there"\n€', "user"), msg(2, "ok")])
    assert (
        body
        == (
            '{"messages":[{"id":1,"content":"hi \\"there\\"\\n€","role":"user","time":"' + T + '"},'
            '{"id":2,"content":"ok","role":"agent","time":"' + T + '"}]}'
        ).encode()
    )


def test_encode_empty_list() -> None:
    assert encode([]) == b'{"messages":[]}'


def test_encode_lone_surrogate_stays_valid_utf8_json() -> None:
    # json.loads('"\\ud800"') yields a lone surrogate, which str.encode("utf-8") rejects.
    body = encode([msg(1, "a\ud800b")])
    assert b"\\ud800" in body
    assert json.loads(body.decode("utf-8"))["messages"][0]["content"] == "a\ud800b"


def test_marker_names_the_count() -> None:
    assert marker(1234) == "[… 1234 earlier characters cut by coder-task-sidecar …]\n"
    assert split_marker(marker(7) + "tail") == (7, "tail")


# --- build: examples ------------------------------------------------------------------


def test_empty_conversation_is_none() -> None:
    assert build([], max_messages=10) is None


@pytest.mark.parametrize(
    ("max_messages", "max_bytes"), [(0, SNAPSHOT_MAX_BYTES), (10, MIN_MAX_BYTES - 1)]
)
def test_preconditions(max_messages: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be >="):
        build([msg(1, "x")], max_messages=max_messages, max_bytes=max_bytes)


def test_small_conversation_is_encoded_whole() -> None:
    messages = [msg(1, "hello", "user"), msg(2, "hi there")]
    assert build(messages, max_messages=10) == encode(messages)


def test_newest_max_messages_by_id_ascending() -> None:
    messages = [msg(i, f"m{i}", "user" if i % 2 else "agent") for i in (5, 3, 19, 0, 7, 12)]
    body = build(messages, max_messages=4)
    assert body is not None
    assert [m.id for m in parse(body)] == [5, 7, 12, 19]


def test_exact_fit_at_the_limit_boundary() -> None:
    limit = 4096
    first = msg(1, "x" * 500, "user")
    # Pad the second message so that the two-message body is exactly `limit` bytes.
    pad = limit - len(encode([first, msg(2, "")]))
    messages = [first, msg(2, "y" * pad)]
    assert len(encode(messages)) == limit

    assert build(messages, max_messages=10, max_bytes=limit) == encode(messages)
    # One byte less: the oldest goes, the newest stays whole.
    assert build(messages, max_messages=10, max_bytes=limit - 1) == encode(messages[1:])


def test_single_message_exact_fit_has_no_marker() -> None:
    limit = 2000
    message = msg(1, "z" * (limit - overhead()))
    assert build([message], max_messages=1, max_bytes=limit) == encode([message])
    cut = build([message], max_messages=1, max_bytes=limit - 1)
    assert cut is not None
    assert len(cut) == limit - 1
    (only,) = parse(cut)
    assert split_marker(only.content) is not None


def test_drop_oldest_until_it_fits() -> None:
    messages = [msg(i, chr(ord("a") + i) * 10_000) for i in range(10)]
    body = build(messages, max_messages=10)
    assert body is not None
    kept = parse(body)
    assert [m.id for m in kept] == [4, 5, 6, 7, 8, 9]
    assert kept == messages[4:]  # kept messages are untouched
    assert len(body) <= SNAPSHOT_MAX_BYTES < len(encode(messages[3:]))


def test_escaping_counts_when_dropping() -> None:
    # 4,000 NULs are 4,000 characters but 24,000 bytes once escaped as \u0000.
    messages = [msg(i, "\x00" * 4_000) for i in range(5)]
    body = build(messages, max_messages=10)
    assert body is not None
    assert [m.id for m in parse(body)] == [3, 4]
    assert len(body) <= SNAPSHOT_MAX_BYTES


def test_oversized_newest_is_cut_behind_marker() -> None:
    content = "".join(f"line {i}\n" for i in range(20_000))
    messages = [msg(1, "question", "user"), msg(2, content)]
    body = build(messages, max_messages=10)
    assert body is not None
    # ASCII plus "\n" escapes: the longest fitting tail fills the limit to within a byte.
    assert SNAPSHOT_MAX_BYTES - 1 <= len(body) <= SNAPSHOT_MAX_BYTES
    (only,) = parse(body)
    assert only.id == 2
    split = split_marker(only.content)
    assert split is not None
    cut, tail = split
    assert content.endswith(tail)
    assert cut == len(content) - len(tail)
    assert tail.endswith("line 19999\n")


def test_ascii_cut_fills_the_limit_exactly() -> None:
    content = "a" * 100_000
    body = build([msg(1, content)], max_messages=10)
    assert body is not None
    assert len(body) == SNAPSHOT_MAX_BYTES


def test_forty_thousand_euro_signs() -> None:
    # 40,000 characters (under the old script's 56 Ki-character cut) but 120,000 bytes.
    content = "€" * 40_000
    body = build([msg(1, content)], max_messages=10)
    assert body is not None
    assert SNAPSHOT_MAX_BYTES - 3 < len(body) <= SNAPSHOT_MAX_BYTES
    (only,) = parse(body)
    split = split_marker(only.content)
    assert split is not None
    cut, tail = split
    assert set(tail) == {"€"}
    assert cut + len(tail) == 40_000
    assert len(tail.encode()) > SNAPSHOT_MAX_BYTES - 200


@pytest.mark.parametrize(
    ("char", "width"),
    [('"', 2), ("\\", 2), ("\n", 2), ("\x01", 6), ("\x1f", 6), ("\x7f", 1)],
)
def test_escape_heavy_content(char: str, width: int) -> None:
    content = char * 70_000
    assert len(encode([msg(1, content)])) > width * 70_000 > SNAPSHOT_MAX_BYTES
    body = build([msg(1, content)], max_messages=10)
    assert body is not None
    assert len(body) <= SNAPSHOT_MAX_BYTES
    # The tail is as long as fits: one more character would not.
    assert len(body) > SNAPSHOT_MAX_BYTES - width
    (only,) = parse(body)
    split = split_marker(only.content)
    assert split is not None
    cut, tail = split
    assert set(tail) == {char}
    assert cut + len(tail) == 70_000


def test_mixed_escape_content_cut_on_code_point_boundary() -> None:
    content = ('"\\\x00€😀ab\t' * 20_000) + "END"
    body = build([msg(1, "q", "user"), msg(2, content)], max_messages=10, max_bytes=5000)
    assert body is not None
    assert len(body) <= 5000
    (only,) = parse(body)
    split = split_marker(only.content)
    assert split is not None
    cut, tail = split
    assert content.endswith(tail)
    assert tail.endswith("END")
    assert cut == len(content) - len(tail)


def test_lone_surrogates_in_newest_are_cut_safely() -> None:
    content = "\udc80x" * 20_000
    body = build([msg(1, content)], max_messages=10, max_bytes=1024)
    assert body is not None
    assert len(body) <= 1024
    (only,) = parse(body)
    split = split_marker(only.content)
    assert split is not None
    assert content.endswith(split[1])


def test_metadata_too_large_raises() -> None:
    # Unreachable for validated messages; the contract is a clear error, not a big body.
    with pytest.raises(ValueError, match="does not fit"):
        build([msg(1, "x", time="9" * 2000)], max_messages=1, max_bytes=1024)


def test_input_is_not_mutated_and_result_is_deterministic() -> None:
    messages = [msg(2, "b" * 50_000), msg(1, "a" * 50_000, "user")]
    before = list(messages)
    first = build(messages, max_messages=10)
    assert first == build(messages, max_messages=10)
    assert messages == before


def test_large_messages_are_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards against quadratic re-encoding and against encoding what cannot fit: the
    # bytes encoded per build depend on the size limit, not on the input's size. Counted,
    # not timed, so that a slow machine cannot fail it.
    real = snapshot._encode_one
    encoded = 0

    def counting(message: Message) -> bytes:
        nonlocal encoded
        body = real(message)
        encoded += len(body)
        return body

    monkeypatch.setattr(snapshot, "_encode_one", counting)

    def cost(messages: list[Message]) -> int:
        nonlocal encoded
        encoded = 0
        assert build(messages, max_messages=10) is not None
        return encoded

    def ten(size: int) -> list[Message]:
        return [msg(i, ("x€\x01" * size)[:size]) for i in range(10)]

    def giant(size: int) -> list[Message]:
        return [msg(1, "y" * size)]

    # Ten times the input: a linear cost would be ten times more, a bounded one the same.
    assert cost(ten(1_000_000)) < 2 * cost(ten(100_000))
    assert cost(giant(20_000_000)) < 2 * cost(giant(2_000_000))


# --- build: the cut at its edges --------------------------------------------------------


def time_with_length(length: int) -> str:
    """A time Coder takes (Go reads a fraction of any length) that is `length` long."""
    head = "2024-05-01T12:00:00."
    assert length > len(head) + 1
    return head + "0" * (length - len(head) - 1) + "Z"


def marker_only_time(content: str, size: int) -> str:
    """The time that makes `content` cut down to the bare marker exactly `size` bytes."""
    bare = len(encode([msg(1, marker(len(content)), time=time_with_length(30))]))
    return time_with_length(30 + size - bare)


def fitted_reference(message: Message, max_bytes: int) -> bytes:
    """The body with the longest tail of `message` that fits, by trying every length."""
    content, total = message.content, len(message.content)
    for keep in range(total, -1, -1):
        cut = message._replace(content=marker(total - keep) + content[total - keep :])
        if len(body := encode([cut])) <= max_bytes:
            return body
    raise AssertionError("not even the marker fits")


def test_metadata_that_exactly_fills_the_limit_keeps_the_bare_marker() -> None:
    content = "z" * 5000
    time = marker_only_time(content, 1100)
    bare = encode([msg(1, marker(5000), time=time)])
    assert len(bare) == 1100
    assert build([msg(1, content, time=time)], max_messages=1, max_bytes=1100) == bare
    with pytest.raises(ValueError, match="does not fit"):
        build([msg(1, content, time=time)], max_messages=1, max_bytes=1099)


@pytest.mark.parametrize("room", range(16))
@pytest.mark.parametrize(
    "content",
    [
        "x" * 1000,  # one kept character takes a digit off the marker's count
        "x" * 1234,
        "€" * 700,
        "\x01" * 500,
        "ab€😀\x01" * 300,
    ],
    ids=["ascii-1000", "ascii", "euro", "control", "mixed"],
)
def test_cut_is_exact_when_only_a_few_bytes_are_left(room: int, content: str) -> None:
    # The marker alone leaves `room` bytes: too few for the search's first guess.
    time = marker_only_time(content, 1024 - room)
    message = msg(1, content, time=time)
    assert build([message], max_messages=1, max_bytes=1024) == fitted_reference(message, 1024)


@pytest.mark.parametrize(
    ("content", "max_bytes"),
    [
        ("x" * 1_000_000, SNAPSHOT_MAX_BYTES),
        ("€" * 300_000, SNAPSHOT_MAX_BYTES),
        (("a" * 50 + "€" * 50) * 5_000, SNAPSHOT_MAX_BYTES),
        ("y" * 5_000, MIN_MAX_BYTES),
    ],
    ids=["ascii", "euro", "alternating", "ascii-at-the-minimum"],
)
def test_cutting_even_text_takes_fewer_encodes_than_a_bisection(
    monkeypatch: pytest.MonkeyPatch, content: str, max_bytes: int
) -> None:
    # The search guesses from the density measured so far, so on text of even density it
    # lands within a few probes: at most half of the log2(max_bytes) steps a bisection
    # would take, plus the bare marker and the first lower bound.
    real = snapshot._encode_one
    calls = 0

    def counting(message: Message) -> bytes:
        nonlocal calls
        calls += 1
        return real(message)

    monkeypatch.setattr(snapshot, "_encode_one", counting)
    body = build([msg(1, content)], max_messages=1, max_bytes=max_bytes)
    assert body is not None
    assert len(body) > max_bytes - 4  # the cut is still the longest that fits
    assert calls <= 2 + (max_bytes.bit_length() - 1) // 2


# --- build: properties ------------------------------------------------------------------

TIMES = [T, "2024-05-01T12:00:00Z", "2023-12-31T23:59:59.5+05:30", "1999-01-01T00:00:00-08:00"]
SPECIAL = '"\\\x00\x01\x1f\x7f\n\r\t\u2028€😀é\ufeff'

chunk = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL)), max_size=24
)
# Repeating a short random chunk reaches the limit's size range quickly.
content = st.one_of(
    chunk,
    st.builds(lambda s, n: s * n, chunk, st.integers(0, 4_000)),
)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    ids = draw(st.lists(st.integers(0, 2**53), unique=True, max_size=14))
    return [
        Message(
            id=i,
            role=draw(st.sampled_from(("user", "agent"))),
            content=draw(content),
            time=draw(st.sampled_from(TIMES)),
        )
        for i in ids
    ]


def check_build(messages: Sequence[Message], max_messages: int, max_bytes: int) -> None:
    body = build(messages, max_messages=max_messages, max_bytes=max_bytes)
    if not messages:
        assert body is None
        return
    assert body is not None
    assert len(body) <= max_bytes
    result = parse(body)
    # Deterministic and compact: the body is exactly what encode gives for its contents.
    assert encode(result) == body

    window = sorted(messages, key=lambda m: m.id)[-max_messages:]
    ids = [m.id for m in result]
    assert ids == sorted(ids)
    assert 1 <= len(result) <= len(window)
    # The newest messages of the window, contiguous, and all but the newest untouched.
    assert ids == [m.id for m in window[-len(result) :]]
    assert result[:-1] == window[-len(result) : -1]

    newest, original = result[-1], window[-1]
    assert (newest.id, newest.role, newest.time) == (original.id, original.role, original.time)
    if newest.content == original.content:
        # Nothing cut: no room for the next older message of the window.
        if len(result) < len(window):
            assert len(encode(window[-len(result) - 1 :])) > max_bytes
    else:
        split = split_marker(newest.content)
        assert split is not None
        cut, tail = split
        assert cut >= 1
        assert original.content.endswith(tail)
        assert cut == len(original.content) - len(tail)
        # Cut only when the newest alone does not fit, and then it is alone.
        assert len(result) == 1
        assert len(encode([original])) > max_bytes
        # Maximal: one more character of tail would not fit.
        longer = original.content[cut - 1 :]
        bigger = Message(original.id, original.role, marker(cut - 1) + longer, original.time)
        assert len(encode([bigger])) > max_bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=conversations(),
    max_messages=st.integers(1, 12),
    max_bytes=st.integers(MIN_MAX_BYTES, SNAPSHOT_MAX_BYTES),
)
def test_build_properties(messages: list[Message], max_messages: int, max_bytes: int) -> None:
    check_build(messages, max_messages, max_bytes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    older=conversations(),
    big=st.builds(lambda s, n: s * n, chunk.filter(bool), st.integers(3_000, 12_000)),
    max_bytes=st.integers(MIN_MAX_BYTES, SNAPSHOT_MAX_BYTES),
)
def test_build_properties_with_oversized_newest(
    older: list[Message], big: str, max_bytes: int
) -> None:
    newest = msg(2**53 + 1, big)
    check_build([*older, newest], 10, max_bytes)


@pytest.mark.parametrize("content", ["a" * 200_000, "€" * 100_000, "line\n" * 40_000])
def test_a_message_the_mirror_kept_only_the_tail_of_is_cut_as_the_whole_would_be(
    content: str,
) -> None:
    # The mirror keeps no more than CONTENT_MAX_CHARS of a message: what a snapshot of
    # the whole would show, the kept tail shows, the marker counting every cut character.
    whole = build([msg(1, content)], max_messages=10)
    kept = build([tail_of(msg(1, content))], max_messages=10)
    assert kept == whole
    assert kept is not None
    split = split_marker(parse(kept)[0].content)
    assert split is not None
    assert split[0] == len(content) - len(split[1])


def test_tail_of_keeps_a_short_message_as_it_is_and_counts_what_it_cuts() -> None:
    short = msg(1, "x" * CONTENT_MAX_CHARS)
    assert tail_of(short) is short
    long = tail_of(msg(1, "a" + "b" * CONTENT_MAX_CHARS))
    assert (long.content, long.cut) == ("b" * CONTENT_MAX_CHARS, 1)
    # Cut again (a tail that grew), the counts add up.
    again = tail_of(long._replace(content=long.content + "cc"))
    assert again.cut == 3
    assert again.content.endswith("cc")
    assert len(again.content) == CONTENT_MAX_CHARS
