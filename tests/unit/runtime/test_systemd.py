"""sd_notify against real AF_UNIX datagram sockets, filesystem and abstract namespace."""

from __future__ import annotations

import asyncio
import select
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.runtime.systemd import Notifier
from tests.fakes.clock import run_on_virtual_clock

RECV_DEADLINE = 5.0
# sockaddr_un.sun_path is 108 bytes including the terminator.
SUN_PATH_MAX = 107


def parse(datagram: bytes) -> dict[str, str]:
    text = datagram.decode("utf-8")
    assert text.endswith("\n"), f"datagram must end with a newline: {text!r}"
    fields: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"line without '=': {line!r}"
        assert key not in fields, f"duplicate field {key!r}"
        fields[key] = value
    return fields


def recv_fields(sock: socket.socket) -> dict[str, str]:
    readable, _, _ = select.select([sock], [], [], RECV_DEADLINE)
    assert readable, f"no datagram within {RECV_DEADLINE} s"
    return parse(sock.recv(65536))


def assert_queue_empty(sock: socket.socket) -> None:
    readable, _, _ = select.select([sock], [], [], 0)
    assert not readable, f"unexpected datagram: {sock.recv(65536)!r}"


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path / "notify.sock")) <= SUN_PATH_MAX:
        yield tmp_path
        return
    # Deep pytest temp paths can exceed sun_path; a short private directory instead.
    short = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def fs_socket(socket_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    path = socket_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield str(path), sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"coder-task-sidecar-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def test_ready_over_filesystem_socket(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = Notifier(path)

    assert notifier.enabled
    assert notifier.ready("running") is True
    assert recv_fields(sock) == {"READY": "1", "STATUS": "running"}


def test_abstract_namespace_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, sock = abstract_socket
    notifier = Notifier(name)

    assert notifier.enabled
    assert notifier.status("streaming snapshots") is True
    assert recv_fields(sock) == {"STATUS": "streaming snapshots"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.status("idle"), {"STATUS": "idle"}),
        (lambda n: n.stopping("flushing"), {"STOPPING": "1", "STATUS": "flushing"}),
        (lambda n: n.extend_timeout(1.5), {"EXTEND_TIMEOUT_USEC": "1500000"}),
        (lambda n: n.extend_timeout(0.0000011), {"EXTEND_TIMEOUT_USEC": "2"}),
        (lambda n: n.watchdog(), {"WATCHDOG": "1"}),
        (lambda n: n.notify(RELOADING="1", STATUS="x"), {"RELOADING": "1", "STATUS": "x"}),
    ],
    ids=["status", "stopping", "extend", "extend-rounds-up", "watchdog", "notify"],
)
def test_each_helper_sends_its_fields(
    abstract_socket: tuple[str, socket.socket],
    call: Callable[[Notifier], bool],
    expected: dict[str, str],
) -> None:
    name, sock = abstract_socket

    assert call(Notifier(name)) is True
    assert recv_fields(sock) == expected


def test_newline_in_a_value_cannot_inject_a_field(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket

    assert Notifier(path).status("agent said:\nREADY=1\r\nbye") is True
    assert recv_fields(sock) == {"STATUS": "agent said: READY=1  bye"}


def test_utf8_status_round_trips(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket

    assert Notifier(path).status("agent → idle ✓") is True
    assert recv_fields(sock) == {"STATUS": "agent → idle ✓"}


async def _virtual_seconds(main: Awaitable[None]) -> float:
    """The virtual time `main` took (run it on tests.fakes.clock's loop)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await main
    return loop.time() - started


@pytest.mark.parametrize("socket_path", [None, ""])
def test_disabled_notifier_is_a_noop(socket_path: str | None) -> None:
    notifier = Notifier(socket_path, watchdog_usec=200_000)

    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.stopping("x") is False
    assert notifier.extend_timeout(1) is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None
    # No socket, nothing to ping: the loop returns at once rather than idling (an idle
    # wait for the never-set event would make the virtual clock report a deadlock).
    idle = _virtual_seconds(notifier.watchdog_loop(asyncio.Event()))
    assert run_on_virtual_clock(idle) == 0.0


def test_unsupported_socket_form_is_disabled() -> None:
    with capture_logs() as logs:
        notifier = Notifier("vsock:2:1234", watchdog_usec=1_000_000)

    assert not notifier.enabled
    assert notifier.watchdog() is False
    assert [e["event"] for e in logs] == ["systemd.notify_socket_unsupported"]


def test_vanished_socket_returns_false_logs_once_and_recovers(socket_dir: Path) -> None:
    path = socket_dir / "gone.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    notifier = Notifier(str(path))
    sock.close()
    path.unlink()

    with capture_logs() as logs:
        assert notifier.watchdog() is False
        assert notifier.status("still failing") is False
    assert [e["event"] for e in logs] == ["systemd.notify_failed"]
    assert "FileNotFoundError" in logs[0]["error"]

    # The manager's socket comes back (e.g. after a re-exec): sending works again.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        with capture_logs() as logs:
            assert notifier.watchdog() is True
        assert recv_fields(sock) == {"WATCHDOG": "1"}
        assert [e["event"] for e in logs] == ["systemd.notify_recovered"]
    finally:
        sock.close()
        path.unlink()


def test_socket_that_is_not_listening_does_not_raise(socket_dir: Path) -> None:
    # A path that exists but is not a socket: sendto fails with ECONNREFUSED/ENOTSOCK-ish
    # errors, which must come back as False like any other OSError.
    path = socket_dir / "plain-file"
    path.write_text("not a socket")

    assert Notifier(str(path)).ready("x") is False


def test_invalid_field_names_and_arguments_raise(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = Notifier(path)

    with pytest.raises(ValueError, match="at least one field"):
        notifier.notify()
    with pytest.raises(ValueError, match="invalid sd_notify field"):
        notifier.notify(**{"A=B": "1"})
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(0)
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(float("nan"))
    assert_queue_empty(sock)


@pytest.mark.parametrize(
    ("usec", "expected"),
    [(30_000_000, 15.0), (200_000, 0.1), (1, 0.0000005), (None, None), (0, None)],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: int | None, expected: float | None
) -> None:
    assert Notifier("@unused", watchdog_usec=usec).watchdog_interval() == expected


def test_watchdog_loop_pings_at_half_watchdog_usec(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, sock = abstract_socket
    sock.setblocking(False)
    notifier = Notifier(name, watchdog_usec=200_000)  # pings every 0.1 s
    pings = 6

    async def ping_times() -> list[float]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        times: list[float] = []
        task = asyncio.create_task(notifier.watchdog_loop(stop))
        try:
            async with asyncio.timeout(RECV_DEADLINE):
                for _ in range(pings):
                    assert parse(await loop.sock_recv(sock, 65536)) == {"WATCHDOG": "1"}
                    times.append(loop.time())
        finally:
            stop.set()
        await asyncio.wait_for(task, timeout=RECV_DEADLINE)
        assert task.exception() is None
        return times

    # On the virtual clock each ping is seen at the time the loop sent it, on any
    # machine: the first at once, then one per 0.1 s, half of WATCHDOG_USEC (at the full
    # WATCHDOG_USEC they would come every 0.2 s).
    expected = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert run_on_virtual_clock(ping_times()) == pytest.approx(expected)


def test_watchdog_loop_stops_promptly_when_event_is_set(
    fs_socket: tuple[str, socket.socket],
) -> None:
    path, sock = fs_socket
    sock.setblocking(False)
    notifier = Notifier(path, watchdog_usec=60_000_000)  # 30 s between pings

    async def seconds_to_stop() -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.create_task(notifier.watchdog_loop(stop))
        assert parse(await asyncio.wait_for(loop.sock_recv(sock, 65536), RECV_DEADLINE)) == {
            "WATCHDOG": "1"
        }
        stop.set()
        seconds = await _virtual_seconds(task)
        assert task.exception() is None
        return seconds

    # None of the 30 s interval passes: the loop waits on the event, not a sleep.
    assert run_on_virtual_clock(seconds_to_stop()) == 0.0
    assert_queue_empty(sock)


async def test_blocked_event_loop_sends_no_pings(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, sock = abstract_socket
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier(name, watchdog_usec=100_000)  # pings every 0.05 s
    stop = asyncio.Event()

    task = asyncio.create_task(notifier.watchdog_loop(stop))
    try:
        await asyncio.wait_for(loop.sock_recv(sock, 65536), RECV_DEADLINE)
        # Simulate a wedged loop for six intervals: a ping sent from another thread
        # would keep systemd happy while the daemon is stuck, which defeats the watchdog.
        time.sleep(0.3)
        assert_queue_empty(sock)
        # Once the loop runs again the pings resume.
        assert parse(await asyncio.wait_for(loop.sock_recv(sock, 65536), RECV_DEADLINE)) == {
            "WATCHDOG": "1"
        }
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=RECV_DEADLINE)


def test_notify_does_not_read_the_environment(
    monkeypatch: pytest.MonkeyPatch, abstract_socket: tuple[str, socket.socket]
) -> None:
    name, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")

    notifier = Notifier(None)

    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert notifier.ready("x") is False
    assert_queue_empty(sock)
