"""The outcome table: how Coder's answers are classified, and what each outcome means."""

from __future__ import annotations

import pytest

from sidecar.coder.outcomes import (
    JSON_OK,
    RESOURCE_NOT_FOUND,
    ROUTE_NOT_FOUND,
    RULES,
    SNAPSHOT_STORED,
    Expect,
    Level,
    Outcome,
    Schedule,
    Sink,
    Step,
    classify,
    no_tasks_api,
    words,
)

NOT_YOURS = "Resource not found or you do not have access to this resource"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, Outcome.RETRY),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (599, Outcome.RETRY),
        (300, Outcome.REDIRECT),
        (301, Outcome.REDIRECT),
        (307, Outcome.REDIRECT),
        (308, Outcome.REDIRECT),
        (399, Outcome.REDIRECT),
        (401, Outcome.UNAUTHORIZED),
        (403, Outcome.UNAUTHORIZED),
        (400, Outcome.REJECTED),
        (409, Outcome.REJECTED),
        (413, Outcome.REJECTED),
        (422, Outcome.REJECTED),
        (499, Outcome.REJECTED),
    ],
)
def test_status_codes_map_to_outcomes(status: int | None, outcome: Outcome) -> None:
    assert classify(status, expect=SNAPSHOT_STORED) is outcome
    assert classify(status, expect=JSON_OK, json_body=True) is outcome


def test_a_stored_snapshot_is_a_204_and_nothing_else() -> None:
    assert classify(204, expect=SNAPSHOT_STORED) is Outcome.OK
    # A login page or a proxy answering 200 to everything has stored nothing.
    for status in (200, 201, 202, 206, 299):
        assert classify(status, expect=SNAPSHOT_STORED) is Outcome.NOT_CODER, status


def test_an_accepted_status_is_a_200_with_a_json_object() -> None:
    assert classify(200, expect=JSON_OK, json_body=True) is Outcome.OK
    assert classify(200, expect=JSON_OK, json_body=False) is Outcome.NOT_CODER
    assert classify(204, expect=JSON_OK, json_body=False) is Outcome.NOT_CODER
    assert classify(201, expect=JSON_OK, json_body=True) is Outcome.NOT_CODER
    # An answer is a JSON object only when the caller says so: unsaid, it is not Coder's.
    assert classify(200, expect=JSON_OK) is Outcome.NOT_CODER


def test_expectations_compare_the_status_exactly() -> None:
    assert classify(201, expect=Expect(201, json=False)) is Outcome.OK
    assert classify(204, expect=Expect(201, json=False)) is Outcome.NOT_CODER


def test_only_coderds_own_words_name_an_unknown_resource() -> None:
    assert classify(404, expect=SNAPSHOT_STORED, message=NOT_YOURS) is Outcome.NOT_FOUND
    assert classify(404, expect=SNAPSHOT_STORED, message=RESOURCE_NOT_FOUND) is Outcome.NOT_FOUND
    assert classify(404, expect=SNAPSHOT_STORED, message=ROUTE_NOT_FOUND) is Outcome.NO_ROUTE
    # A bare 404 (coder/registry's own shutdown tests answer one), a proxy's page, or
    # some other text: the path is not served here.
    for message in (None, "", "Not Found", "resource not found", " Resource not found"):
        assert classify(404, expect=SNAPSHOT_STORED, message=message) is Outcome.NO_ROUTE
    # The words matter only on a 404.
    assert classify(400, expect=SNAPSHOT_STORED, message=ROUTE_NOT_FOUND) is Outcome.REJECTED
    assert classify(400, expect=SNAPSHOT_STORED, message=NOT_YOURS) is Outcome.REJECTED


def test_every_outcome_has_a_rule() -> None:
    assert set(RULES) == set(Outcome)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_rules_hold_together(outcome: Outcome) -> None:
    rule = RULES[outcome]
    # Only a retried outcome has a schedule, and only a failure is logged above info.
    assert (rule.step is Step.RETRY) == (rule.schedule is not Schedule.NONE)
    assert (rule.step is Step.ACCEPTED) == (rule.level is Level.INFO)
    if rule.lasting or rule.readiness is not None or rule.reload_token:
        assert rule.step is Step.RETRY
    # What holds readiness back is something a person must fix, told once or each time.
    if rule.schedule is Schedule.TRANSIENT:
        assert rule.readiness is None
        assert not rule.once
        assert not rule.lasting


def test_what_seconds_cannot_heal_is_lasting() -> None:
    lasting = {o for o, rule in RULES.items() if rule.lasting}
    assert lasting == {Outcome.NO_ROUTE, Outcome.REDIRECT, Outcome.NOT_CODER}


def test_only_a_rejected_token_re_reads_the_token() -> None:
    assert {o for o, rule in RULES.items() if rule.reload_token} == {Outcome.UNAUTHORIZED}


def test_only_a_missing_route_means_a_missing_endpoint() -> None:
    assert {o for o, rule in RULES.items() if rule.endpoint_missing} == {Outcome.NO_ROUTE}


def test_readiness_is_held_back_by_what_a_person_must_fix() -> None:
    held = {o for o, rule in RULES.items() if rule.readiness is not None}
    # A missing route is reported as snapshots being off, not as being stuck.
    assert held == {Outcome.NOT_FOUND, Outcome.UNAUTHORIZED, Outcome.REDIRECT, Outcome.NOT_CODER}


def test_log_event_names_are_stable() -> None:
    events = {
        sink: {o: words(sink, o).event for o in Outcome} for sink in (Sink.SNAPSHOT, Sink.STATUS)
    }
    assert events[Sink.SNAPSHOT] == {
        Outcome.OK: "posted",
        Outcome.RETRY: "retry",
        Outcome.REJECTED: "rejected",
        Outcome.NOT_FOUND: "task_not_found",
        Outcome.NO_ROUTE: None,  # the uploader says it itself, with the server's version
        Outcome.UNAUTHORIZED: "unauthorized",
        Outcome.REDIRECT: "redirected",
        Outcome.NOT_CODER: "not_coder",
    }
    assert events[Sink.STATUS] == {
        Outcome.OK: "patched",
        Outcome.RETRY: "retry",
        Outcome.REJECTED: "rejected",
        Outcome.NOT_FOUND: "not_found",
        Outcome.NO_ROUTE: "no_route",
        Outcome.UNAUTHORIZED: "unauthorized",
        Outcome.REDIRECT: "redirected",
        Outcome.NOT_CODER: "not_coder",
    }


@pytest.mark.parametrize("sink", list(Sink))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_failure_tells_check_something(sink: Sink, outcome: Outcome) -> None:
    said = words(sink, outcome)
    assert said.check, (sink, outcome)
    # Every field a template names is one `check` fills in.
    said.check.format(answer="HTTP 1", location="x", task="t", slug="s", version="v")


def test_a_coder_without_tasks_is_said_one_way() -> None:
    assert no_tasks_api("v2.37.2") == (
        "Coder v2.37.2 has no Tasks API: log snapshots are off; statuses are still relayed"
    )
    assert no_tasks_api(None).startswith("Coder (version unknown) has no Tasks API")
    check = words(Sink.SNAPSHOT, Outcome.NO_ROUTE).check.format(version="v2.37.2")
    assert check == no_tasks_api("v2.37.2")
