"""Log-snapshot body building with byte-exact fitting (SPEC §3 "Snapshot building").

Coder reads the body through a 65,536-byte limit, so every size here is measured on the
encoded bytes that will be sent, never on characters: JSON escaping can turn one control
character into six bytes and one "€" is three.

The body is `{"messages":[m1,m2,...]}` in compact form, so its size is the sum of the
separately encoded messages plus fixed framing. That lets `build` encode each message
once while it decides how many fit, instead of re-encoding the whole body per step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Final

from sidecar.models import SNAPSHOT_MAX_BYTES, Message

__all__ = ["MARKER_FORMAT", "MIN_MAX_BYTES", "build", "encode", "marker"]

MARKER_FORMAT: Final = "[… {cut} earlier characters cut by coder-task-sidecar …]\n"
# Room for the framing, one message's metadata and the marker, so a cut always fits.
MIN_MAX_BYTES: Final = 1024

_PREFIX: Final = b'{"messages":['
_SUFFIX: Final = b"]}"
_FRAMING: Final = len(_PREFIX) + len(_SUFFIX)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def marker(cut: int) -> str:
    """The visible notice put in front of a cut message; `cut` counts code points."""
    return MARKER_FORMAT.format(cut=cut)


def _encode_one(message: Message) -> bytes:
    # A lone surrogate (valid in a Python str, e.g. from a JSON "\ud800" escape) cannot be
    # encoded as UTF-8. backslashreplace writes it as the JSON escape \udXXX instead,
    # which keeps the body valid UTF-8 and valid JSON, and never raises.
    return _dumps(message.as_json_obj()).encode("utf-8", "backslashreplace")


def encode(messages: Sequence[Message]) -> bytes:
    """The compact JSON body for `messages`, in the order given."""
    return _PREFIX + b",".join(_encode_one(m) for m in messages) + _SUFFIX


def build(
    messages: Sequence[Message],
    *,
    max_messages: int,
    max_bytes: int = SNAPSHOT_MAX_BYTES,
    clean: Callable[[str], str] | None = None,
) -> bytes | None:
    """The body to post: the newest `max_messages` messages by id, ascending, dropping the
    oldest until it fits in `max_bytes`; a newest message too large on its own keeps the
    longest tail of its content that fits, behind `marker(cut)`. None when there is
    nothing to post. `clean` rewrites each content first (secrets out), so that no cut
    can leave part of a secret behind.

    Raises ValueError when `max_messages < 1` or `max_bytes < MIN_MAX_BYTES`, or when a
    message's metadata alone cannot fit (impossible for messages that passed
    `validate_message` with ids that fit in 64 bits).
    """
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, got {max_messages}")
    if max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"max_bytes must be >= {MIN_MAX_BYTES}, got {max_bytes}")
    if not messages:
        return None
    newest = sorted(messages, key=lambda m: m.id)[-max_messages:]
    if clean is not None:
        newest = [m._replace(content=clean(m.content)) for m in newest]

    # Walk from the newest backwards, encoding only what could still fit.
    kept: list[bytes] = []
    size = _FRAMING - 1  # n messages need n - 1 commas
    for message in reversed(newest):
        # Every code point encodes to at least one byte: a message that cannot fit is
        # recognised without encoding it (it may be megabytes of terminal output).
        if size + 1 + len(message.content) > max_bytes:
            break
        encoded = _encode_one(message)
        if size + 1 + len(encoded) > max_bytes:
            break
        kept.append(encoded)
        size += 1 + len(encoded)
    if kept:
        kept.reverse()
        return _PREFIX + b",".join(kept) + _SUFFIX
    return _fit_newest(newest[-1], max_bytes)


def _fit_newest(message: Message, max_bytes: int) -> bytes:
    """`message` alone does not fit: keep the longest tail of its content that does. Its
    content may be a tail already (`message.cut` characters before it are gone): the
    marker counts those too."""
    content = message.content
    total = len(content)
    already = message.cut

    def body(keep: int) -> bytes:
        tail = content[total - keep :]
        cut = message._replace(content=marker(already + total - keep) + tail, cut=0)
        return _PREFIX + _encode_one(cut) + _SUFFIX

    digits = len(str(already + total))  # the most the marker's count can shrink by
    best = body(0)
    if len(best) > max_bytes:
        raise ValueError(
            f"message {message.id} does not fit in {max_bytes} bytes even without content"
        )
    # The size grows monotonically with `keep`: one more kept code point adds 1 to 6
    # bytes while the marker's count shrinks by at most one digit. So binary search is
    # exact, and these bounds hold (d = digits of the largest count, which only shrink):
    #   len(body(0)) + keep - d <= len(body(keep)) <= len(body(0)) + 6 * keep
    # The upper end also keeps a multi-megabyte message as cheap as a small one.
    room = max_bytes - len(best)
    base = len(best)
    lo = min(total, room // 6)
    hi = min(total, room + digits)
    if lo:
        best = body(lo)
        # Each further code point costs at least a byte (less a marker digit).
        hi = min(hi, lo + max_bytes - len(best) + digits)
    # Search with a guess from the density measured so far (terminal text is nearly
    # uniform, so it usually lands within a few code points), falling back to halving
    # whenever the guess would not shrink the range enough.
    guessing = True
    while lo < hi:
        mid = (lo + hi + 1) // 2
        grown = len(best) - base
        if guessing and lo and grown > 0:
            # Aim a little short: landing just inside keeps the next guess exact, while
            # landing just outside would only move the upper bound by one.
            guess = lo + int((max_bytes - len(best)) * lo / grown * 0.995)
            if lo < guess <= hi:
                mid = guess
        candidate = body(mid)
        if len(candidate) <= max_bytes:
            lo, best = mid, candidate
            # Each further code point costs at least a byte (less a marker digit).
            hi = min(hi, lo + max_bytes - len(best) + digits)
        else:
            hi = mid - 1
            guessing = not guessing  # after a miss, one halving step
    return best
