"""Event builders shared by the relay tests: message ids double as seconds, so a newer
message is also a later one."""

from __future__ import annotations

from sidecar.models import AgentStatus, Message, MessageUpdate, StatusChange


def at(second: int) -> str:
    return f"2025-03-01T10:00:{second:02d}Z"


def user(mid: int, text: str) -> MessageUpdate:
    return MessageUpdate(Message(id=mid, role="user", content=text, time=at(mid)))


def agent(mid: int, text: str) -> MessageUpdate:
    return MessageUpdate(Message(id=mid, role="agent", content=text, time=at(mid)))


RUNNING = StatusChange(AgentStatus.RUNNING)
STABLE = StatusChange(AgentStatus.STABLE)
