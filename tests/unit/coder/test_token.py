from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import structlog

from sidecar import log as sidecar_log
from sidecar.coder.token import TokenError, TokenSource, read_token_file

A = "11111111-2222-4333-8444-555555555555"
B = "99999999-8888-4777-8666-555555555555"


def write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


def test_value_token() -> None:
    assert TokenSource(value=A).value() == A
    assert TokenSource(value=A).reload() is False


def test_exactly_one_origin(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource()
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource(value=A, path=tmp_path / "t")


def test_file_is_trimmed_and_reloaded_on_change(tmp_path: Path) -> None:
    f = tmp_path / "token"
    write(f, f"\n  {A}  \n")
    source = TokenSource(path=f)
    assert source.value() == A
    assert source.reload() is False  # unchanged file
    # Atomic replacement, as a secret manager does it.
    tmp = tmp_path / "token.new"
    write(tmp, B)
    os.replace(tmp, f)
    assert source.reload() is True
    assert source.value() == B


def test_file_that_turns_empty_keeps_the_old_token(tmp_path: Path) -> None:
    f = tmp_path / "token"
    write(f, A)
    source = TokenSource(path=f)
    write(f, "   ")
    assert source.reload(force=True) is False
    assert source.value() == A
    f.unlink()
    assert source.reload(force=True) is False
    assert source.value() == A


def test_read_token_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        read_token_file(empty)


def _capture_json_logs() -> io.StringIO:
    out = io.StringIO()
    sidecar_log.configure("debug", "json", out)
    return out


def test_world_readable_token_file_warns(tmp_path: Path) -> None:
    out = _capture_json_logs()
    f = tmp_path / "token"
    write(f, A, mode=0o644)
    TokenSource(path=f)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    warning = next(e for e in events if e["event"] == "token.file_exposed")
    assert warning["mode"] == "0o644"
    assert A not in out.getvalue()


def test_private_token_file_does_not_warn(tmp_path: Path) -> None:
    out = _capture_json_logs()
    f = tmp_path / "token"
    write(f, A, mode=0o600)
    TokenSource(path=f)
    assert "token.file_exposed" not in out.getvalue()


def test_tokens_are_redacted_from_every_log_value(tmp_path: Path) -> None:
    out = _capture_json_logs()
    f = tmp_path / "token"
    write(f, A)
    source = TokenSource(path=f)
    logger = structlog.get_logger("test")
    logger.info("leak.attempt", header=f"Coder-Session-Token: {A}", error=ValueError(A))
    write(f, B)
    source.reload(force=True)
    logger.info("leak.attempt", detail=f"new {B}")
    text = out.getvalue()
    assert A not in text
    assert B not in text
    assert text.count(sidecar_log.REDACTED) == 3
