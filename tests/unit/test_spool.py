from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from sidecar.models import Message
from sidecar.spool import Spool

TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
BODY = json.dumps(
    {"messages": [{"id": 0, "content": "hi", "role": "user", "time": "2026-01-01T00:00:00Z"}]},
    separators=(",", ":"),
).encode()


def body(spool: Spool) -> bytes | None:
    loaded = spool.load()
    return loaded.body if loaded is not None else None


def test_roundtrip_and_clear(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state", TASK)
    assert spool.load() is None
    assert spool.save(BODY)
    assert spool.path == tmp_path / "state" / f"{TASK}.json"
    loaded = Spool(tmp_path / "state", TASK).load()
    assert loaded is not None
    assert loaded.body == BODY
    assert loaded.messages == (Message(0, "user", "hi", "2026-01-01T00:00:00Z"),)
    spool.clear()
    assert spool.load() is None
    spool.clear()  # idempotent


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TASK)
    spool.save(BODY)
    newer = BODY.replace(b'"hi"', b'"hello"')
    spool.save(newer)
    assert body(spool) == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{TASK}.json"]


def test_directory_is_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new", TASK)
    spool.save(BODY)
    assert (tmp_path / "new").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"messages": [',  # torn write by someone else
        b"[]",
        b'{"messages": null}',
        b'{"messages": []}',
        b'{"messages": [{"id": 0, "content": "x", "role": "system",'
        b' "time": "2026-01-01T00:00:00Z"}]}',
        b'{"messages": [{"id": 0, "content": "x", "role": "user"}]}',
    ],
)
def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    spool = Spool(tmp_path, TASK)
    spool.path.write_bytes(content)
    assert spool.load() is None
    assert not spool.path.exists()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    # The slot is usable again.
    assert spool.save(BODY)
    assert body(spool) == BODY


def test_unwritable_directory_reports_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = Spool(blocker / "sub", TASK)
    assert spool.save(BODY) is False


NEWER = BODY.replace(b'"hi"', b'"hello"')


def test_a_delivered_body_is_recorded_and_the_spool_cleared(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TASK)
    assert spool.keep(BODY)
    spool.delivered(BODY)
    assert not spool.path.exists()
    assert spool.accepted_path.read_bytes() == BODY
    again = Spool(tmp_path, TASK).recover()
    assert again.pending is None
    assert again.accepted is not None
    assert again.accepted.body == BODY
    assert again.held == again.accepted


def test_a_spool_newer_than_the_record_is_pending_and_held(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TASK)
    spool.delivered(BODY)
    assert spool.keep(NEWER)
    kept = Spool(tmp_path, TASK).recover()
    assert kept.pending is not None
    assert kept.pending.body == NEWER
    assert kept.held == kept.pending


def test_a_spool_coder_holds_already_is_not_pending_at_the_next_start(tmp_path: Path) -> None:
    # Accepted, but its removal failed and the record was written: a later start must
    # not post it again over newer words.
    spool = Spool(tmp_path, TASK)
    assert spool.save(BODY)
    (tmp_path / f"{TASK}.accepted.json").write_bytes(BODY)
    kept = Spool(tmp_path, TASK).recover()
    assert kept.pending is None
    assert not spool.path.exists()


def test_a_corrupt_record_is_moved_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TASK)
    spool.accepted_path.write_bytes(b"{not json")
    assert spool.recover().accepted is None
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_each_body_is_written_once(tmp_path: Path) -> None:
    writes: list[int] = []
    spool = Spool(tmp_path, TASK, on_write=lambda: writes.append(1))
    assert spool.keep(BODY)
    assert spool.keep(BODY)
    assert writes == [1]
    spool.delivered(BODY)
    spool.delivered(BODY)
    assert spool.accepted_path.read_bytes() == BODY
