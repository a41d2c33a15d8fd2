"""JSON bytes as Go's encoding/json writes them, for the fakes of Go servers.

Go's `json.Encoder` writes compact JSON with non-ASCII characters as they are, ends every
value with a newline, always escapes U+2028 and U+2029, and by default also escapes `<`,
`>` and `&` (as `\\u003c`, `\\u003e`, `\\u0026`). agentapi's SSE frames and state file use
an encoder with that default; huma's response bodies turn the HTML escaping off. Invalid
UTF-8 becomes U+FFFD in Go; a lone surrogate here becomes `?`, the nearest equivalent.
"""

from __future__ import annotations

import json
from typing import Final

__all__ = ["encode"]

_ALWAYS: Final = {"\u2028": "\\u2028", "\u2029": "\\u2029"}
_HTML: Final = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def encode(value: object, *, escape_html: bool) -> bytes:
    """`value` as `json.NewEncoder(w).Encode(value)` writes it (with SetEscapeHTML)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Outside strings compact JSON holds none of these characters, so a plain
    # replacement only ever touches string contents.
    for raw, escaped in (_ALWAYS | _HTML if escape_html else _ALWAYS).items():
        if raw in text:
            text = text.replace(raw, escaped)
    return (text + "\n").encode("utf-8", "replace")
