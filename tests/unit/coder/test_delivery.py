"""Delivery: the outcome table applied for one sink, driven on a fake clock with scripted
results. (The loop around it is tests/unit/coder/test_slotloop.py.)"""

from __future__ import annotations

import random
from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.delivery import Decision, Delivery
from sidecar.coder.outcomes import RULES, Outcome, Sink, Step, words
from sidecar.coder.retry import (
    CONFIG_FLOOR_S,
    NO_ROUTE_FLOOR_S,
    NOT_FOUND_FLOOR_S,
    RetryPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Credentials:
    def __init__(self, changes: bool = False, fails: bool = False) -> None:
        self.changes = changes
        self.fails = fails
        self.reloads = 0

    async def reload_token(self) -> bool:
        self.reloads += 1
        if self.fails:
            raise OSError("token file vanished")
        return self.changes


def res(
    outcome: Outcome,
    status: int | None = None,
    *,
    retry_after: float | None = None,
    location: str | None = None,
) -> Result:
    return Result(outcome, status, f"detail {status}", retry_after, 2.0, location)


def make(
    credentials: Credentials | None = None, clock: Clock | None = None, sink: Sink = Sink.STATUS
) -> tuple[Delivery, Clock, Credentials]:
    clock = clock or Clock()
    credentials = credentials or Credentials()
    rng = random.Random(3)
    retry = RetryPolicy(
        transient=Backoff(base=1.0, cap=4.0, rng=rng),
        not_found=Backoff(base=60.0, cap=540.0, rng=rng),
        auth=Backoff(base=5.0, cap=300.0, rng=rng),
        no_route=Backoff(base=600.0, cap=600.0, rng=rng),
    )
    return (
        Delivery(sink=sink, credentials=credentials, retry=retry, clock=clock),
        clock,
        credentials,
    )


def named(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_accepted_is_logged_with_the_sinks_fields() -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.OK, 204), bytes=10)
    assert decision == Decision(RULES[Outcome.OK])
    assert named(logs, "relay.patched") == [
        {
            "event": "relay.patched",
            "log_level": "info",
            "bytes": 10,
            "status": 204,
            "latency_ms": 2.0,
            "attempt": 1,
        }
    ]


async def test_refused_is_final_and_resets_the_failure_run() -> None:
    delivery, _, _ = make()
    await delivery.record(res(Outcome.RETRY, 503))
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.REJECTED, 400))
    assert decision.step is Step.REFUSED
    assert not decision.keep
    (logged,) = named(logs, "relay.rejected")
    assert logged["attempt"] == 2
    assert delivery.retry.failures == 0


async def test_transient_failure_retries_within_seconds_and_keeps_the_item() -> None:
    delivery, clock, _ = make()
    sent = delivery.sending()
    assert sent == 1
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.RETRY, 503))
    assert decision.step is Step.RETRY
    assert 0 < decision.delay <= 1.0
    assert decision.keep
    assert delivery.ready_at() == pytest.approx(clock.now + decision.delay)
    (logged,) = named(logs, "relay.retry")
    assert logged["retry_in_s"] == round(decision.delay, 2)
    # A transient failure holds nothing back for long.
    assert delivery.blocked_reason is None
    assert delivery.sending() == 2


async def test_retry_after_is_honoured() -> None:
    delivery, clock, _ = make()
    decision = await delivery.record(res(Outcome.RETRY, 429, retry_after=42.0))
    assert decision.delay == 42.0
    assert delivery.ready_at() == clock.now + 42.0


async def test_not_found_is_logged_once_per_failure_run_and_backs_off_for_minutes() -> None:
    delivery, clock, _ = make()
    with capture_logs() as logs:
        first = await delivery.record(res(Outcome.NOT_FOUND, 404))
        second = await delivery.record(res(Outcome.NOT_FOUND, 404))
    assert first.delay >= NOT_FOUND_FLOOR_S
    assert second.delay >= NOT_FOUND_FLOOR_S
    (logged,) = named(logs, "relay.not_found")
    assert logged["hint"] == words(Sink.STATUS, Outcome.NOT_FOUND).hint
    assert delivery.blocked is Outcome.NOT_FOUND
    assert delivery.blocked_reason == RULES[Outcome.NOT_FOUND].readiness
    clock.now += second.delay
    assert delivery.blocked is None
    assert delivery.blocked_reason is None
    # After a success, the next 404 is news again.
    await delivery.record(res(Outcome.OK, 204))
    with capture_logs() as logs:
        await delivery.record(res(Outcome.NOT_FOUND, 404))
    assert len(named(logs, "relay.not_found")) == 1


async def test_missing_route_backs_off_for_about_an_hour() -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.NO_ROUTE, 404))
        await delivery.record(res(Outcome.NO_ROUTE, 404))
    assert NO_ROUTE_FLOOR_S <= decision.delay <= NO_ROUTE_FLOOR_S + 600
    assert len(named(logs, "relay.no_route")) == 1
    assert decision.rule.endpoint_missing
    # Snapshots being off is reported as such, not as a stuck upload.
    assert delivery.blocked is None


async def test_a_sink_that_explains_a_missing_route_itself_gets_no_line() -> None:
    delivery, _, _ = make(sink=Sink.SNAPSHOT)
    with capture_logs() as logs:
        await delivery.record(res(Outcome.NO_ROUTE, 404))
    assert logs == []


async def test_redirect_is_logged_once_with_where_it_points() -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        first = await delivery.record(res(Outcome.REDIRECT, 308, location="https://c.example/"))
        await delivery.record(res(Outcome.REDIRECT, 308, location="https://c.example/"))
    (logged,) = named(logs, "relay.redirected")
    assert logged["location"] == "https://c.example/"
    assert "CODER_AGENT_URL" in logged["hint"]
    assert first.keep
    assert first.delay >= CONFIG_FLOOR_S
    assert delivery.blocked is Outcome.REDIRECT


async def test_an_answer_no_coder_gives_is_logged_once_and_backs_off_slowly() -> None:
    delivery, _, _ = make(sink=Sink.SNAPSHOT)
    with capture_logs() as logs:
        first = await delivery.record(res(Outcome.NOT_CODER, 200))
        await delivery.record(res(Outcome.NOT_CODER, 200))
    (logged,) = named(logs, "snapshot.not_coder")
    assert logged["log_level"] == "error"
    assert "CODER_AGENT_URL" in logged["hint"]
    assert first.keep
    assert first.delay >= CONFIG_FLOOR_S
    assert delivery.blocked is Outcome.NOT_CODER


async def test_unauthorized_reads_the_token_first_and_retries_at_once_when_it_changed() -> None:
    delivery, clock, credentials = make(Credentials(changes=True))
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.UNAUTHORIZED, 401))
    assert credentials.reloads == 1
    assert decision == Decision(RULES[Outcome.UNAUTHORIZED], 0.0)
    assert not decision.keep
    (logged,) = named(logs, "relay.unauthorized")
    assert logged["token_changed"] is True
    assert logged["retry_in_s"] == 0
    assert delivery.ready_at() == clock.now


async def test_unauthorized_with_the_same_token_backs_off() -> None:
    delivery, _, credentials = make()
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.UNAUTHORIZED, 403))
    assert credentials.reloads == 1
    assert decision.delay >= CONFIG_FLOOR_S
    assert decision.keep
    assert named(logs, "relay.unauthorized")[0]["token_changed"] is False
    assert delivery.blocked is Outcome.UNAUTHORIZED


async def test_a_token_reload_that_raises_counts_as_unchanged() -> None:
    delivery, _, _ = make(Credentials(fails=True))
    with capture_logs() as logs:
        decision = await delivery.record(res(Outcome.UNAUTHORIZED, 401))
    assert decision.delay >= CONFIG_FLOOR_S
    assert named(logs, "token.reload_failed")


async def test_credentials_changed_lifts_only_a_401_backoff() -> None:
    delivery, clock, _ = make()
    await delivery.record(res(Outcome.NOT_FOUND, 404))
    assert delivery.credentials_changed() is False
    assert delivery.ready_at() > clock.now
    await delivery.record(res(Outcome.UNAUTHORIZED, 401))
    assert delivery.credentials_changed() is True
    assert delivery.ready_at() <= clock.now


async def test_ready_at_keeps_the_gap_after_the_last_attempt() -> None:
    delivery, clock, _ = make()
    assert delivery.ready_at(1.0) == float("-inf")
    delivery.sending()
    assert delivery.ready_at(1.0) == clock.now + 1.0
    await delivery.record(res(Outcome.RETRY, 503, retry_after=30.0))
    assert delivery.ready_at(1.0) == clock.now + 30.0
    delivery.final()
    assert delivery.ready_at(1.0) == clock.now + 1.0


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(Outcome.RETRY, 503), (Outcome.NOT_FOUND, 404), (Outcome.UNAUTHORIZED, 401)],
)
async def test_at_stop_what_seconds_may_heal_retries_on_the_short_schedule(
    outcome: Outcome, status: int
) -> None:
    delivery, _, _ = make()
    delivery.final()
    decision = await delivery.record(res(outcome, status))
    assert decision.delay <= 1.0


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(Outcome.NO_ROUTE, 404), (Outcome.REDIRECT, 307), (Outcome.NOT_CODER, 200)],
)
async def test_at_stop_what_seconds_cannot_heal_keeps_its_long_wait(
    outcome: Outcome, status: int
) -> None:
    delivery, _, _ = make()
    delivery.final()
    decision = await delivery.record(res(outcome, status))
    assert decision.delay >= CONFIG_FLOOR_S


# --- what each failure line carries ------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status", "event"),
    [
        (Outcome.RETRY, 503, "relay.retry"),
        (Outcome.NOT_FOUND, 404, "relay.not_found"),
        (Outcome.NO_ROUTE, 404, "relay.no_route"),
        (Outcome.REDIRECT, 308, "relay.redirected"),
        (Outcome.UNAUTHORIZED, 401, "relay.unauthorized"),
        (Outcome.NOT_CODER, 200, "relay.not_coder"),
    ],
)
async def test_a_failure_line_carries_the_answer_and_the_wait(
    outcome: Outcome, status: int, event: str
) -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        decision = await delivery.record(res(outcome, status), bytes=7)
    (logged,) = named(logs, event)
    assert logged["log_level"] in ("warning", "error")
    assert logged["status"] == status
    assert logged["detail"] == f"detail {status}"
    assert logged["attempt"] == 1
    assert logged["bytes"] == 7
    assert logged["retry_in_s"] == round(decision.delay, 2)


async def test_failure_lines_tell_a_person_what_to_check() -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        await delivery.record(res(Outcome.NO_ROUTE, 404))
        await delivery.record(res(Outcome.UNAUTHORIZED, 401))
    assert named(logs, "relay.no_route")[0]["hint"] == words(Sink.STATUS, Outcome.NO_ROUTE).hint
    assert "CODER_AGENT_TOKEN_FILE" in named(logs, "relay.unauthorized")[0]["hint"]


async def test_a_token_reload_failure_is_logged_with_its_error() -> None:
    delivery, _, _ = make(Credentials(fails=True))
    with capture_logs() as logs:
        await delivery.record(res(Outcome.UNAUTHORIZED, 401))
    (logged,) = named(logs, "token.reload_failed")
    assert logged["error"] == "token file vanished"


async def test_latency_is_logged_in_milliseconds_to_a_tenth() -> None:
    delivery, _, _ = make()
    with capture_logs() as logs:
        await delivery.record(Result(Outcome.OK, 204, "", None, 12.3456))
    assert named(logs, "relay.patched")[0]["latency_ms"] == 12.3


async def test_a_client_that_raises_counts_as_no_answer() -> None:
    delivery, _, _ = make()

    async def broken() -> Result:
        raise RuntimeError("a bug in the client")

    with capture_logs() as logs:
        result = await delivery.call(broken())
    assert result.outcome is Outcome.RETRY
    assert result.status is None
    assert result.detail == "RuntimeError"
    (logged,) = named(logs, "relay.client_error")
    assert logged["log_level"] == "error"
    assert logged["exc_info"] is True
