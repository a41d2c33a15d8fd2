"""Files in a state directory that may be shared: what is refused, and what is written how.

The tests run as whichever user runs the suite; "another user's" file is made with chown,
which needs root: those cases skip, saying so, elsewhere. A directory that refuses new
files while its files stay writable is made with `chattr +i` (root on ext4 and the like);
where that is not possible the case skips, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from sidecar import statedir
from sidecar.runtime.lock import DaemonLock, read_record, running_daemon
from sidecar.spool import Spool, open_spool, state_dir_refused

TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
BODY = b'{"messages":[{"id":0,"content":"hi","role":"user","time":"2026-01-01T00:00:00Z"}]}'
OTHER_UID = 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file needs root")


def owned_by_another(path: Path) -> None:
    os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


# --- files -----------------------------------------------------------------------------------


def test_a_regular_file_of_ours_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(BODY)
    assert statedir.read_owned(path) == BODY
    assert statedir.read_owned(tmp_path / "missing") is None


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(BODY)
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(statedir.Unsafe, match="symbolic link"):
        statedir.read_owned(link)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Opening a FIFO for reading without a writer would block for ever: it does not.
    with pytest.raises(statedir.Unsafe, match="not a regular file"):
        statedir.read_owned(fifo)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(statedir.Unsafe, match="not a regular file"):
        statedir.read_owned(Path("/dev/zero"))


def test_a_file_larger_than_any_of_ours_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB, sparse: refused by its size, never read
    with pytest.raises(statedir.Unsafe, match="larger than"):
        statedir.read_owned(huge)


@needs_root
def test_another_users_file_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.write_bytes(BODY)
    owned_by_another(planted)
    with pytest.raises(statedir.Unsafe, match="owned by uid 4242"):
        statedir.read_owned(planted)


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    open_to_all = tmp_path / "f"
    open_to_all.write_bytes(BODY)
    open_to_all.chmod(0o666)
    with pytest.raises(statedir.Unsafe, match="writable by every user"):
        statedir.read_owned(open_to_all)


# --- directories -----------------------------------------------------------------------------


@needs_root
def test_another_users_directory_is_refused_and_nothing_is_read_there(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / f"{TASK}.json").write_bytes(BODY)
    owned_by_another(shared)
    with capture_logs() as logs:
        spool, kept = open_spool(shared, TASK)
    assert spool is None
    assert kept.held is None
    (said,) = [e for e in logs if e["event"] == "state_dir.unsafe"]
    assert "SIDECAR_STATE_DIR" in said["hint"]


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert state_dir_refused(shared)
    assert not state_dir_refused(tmp_path / "ours")  # created, 0700
    assert (tmp_path / "ours").stat().st_mode & 0o777 == 0o700


# --- the lock ---------------------------------------------------------------------------------


def test_a_lock_planted_as_a_symlink_never_truncates_its_target(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "daemon.lock").symlink_to(victim)
    lock = DaemonLock(state)
    with pytest.raises(statedir.Unsafe):
        lock.acquire()
    assert victim.read_text() == "precious\n"
    assert read_record(state) == {}
    assert running_daemon(state) is None


def test_a_lock_that_is_a_fifo_does_not_hang_its_readers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "daemon.lock")
    assert read_record(state) == {}
    assert running_daemon(state) is None


# --- writing where no new file may be made -----------------------------------------------------


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed: no way to make a directory refuse new files")
    made = subprocess.run([chattr, "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_in_a_directory_turned_read_only_a_delivered_spool_is_overwritten_in_place(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    spool = Spool(state, TASK)
    assert spool.keep(BODY)
    newer = BODY.replace(b'"hi"', b'"hello"')
    spool.delivered(BODY.replace(b'"hi"', b'"ok"'))  # the record exists too
    assert spool.keep(newer)
    with immutable(state):
        # No file can be made or removed there now: the spool cannot be cleared, so it
        # is rewritten where it stands with what Coder holds, and the record likewise.
        spool.delivered(newer)
    assert spool.path.read_bytes() == newer
    assert spool.accepted_path.read_bytes() == newer
    # The next start does not post it again: Coder holds it already.
    assert Spool(state, TASK).recover().pending is None
