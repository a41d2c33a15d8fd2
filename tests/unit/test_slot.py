"""SnapshotSlot, driven through its public methods: what a fresh slot holds, what a change,
a take and an acceptance do to it."""

from __future__ import annotations

from sidecar.slot import Skip, SnapshotSlot


def test_a_fresh_slot_has_nothing_to_send() -> None:
    slot = SnapshotSlot()
    assert slot.dirty is False
    assert slot.urgent is False
    assert slot.no_tasks_api is False
    assert slot.pending_since is None
    assert slot.accepted is None
    assert slot.refused is None
    assert slot.skip(b"") is None  # nothing was refused yet, not even an empty body


def test_a_slot_started_with_a_spooled_body_is_pending_since_the_start() -> None:
    assert SnapshotSlot(pending=True).pending_since == 0.0
    slot = SnapshotSlot(pending=True, now=7.0)
    assert slot.pending_since == 7.0
    assert slot.dirty is True
    assert slot.urgent is False
    # Accepted without a take in between: the change from the start is still unsent.
    slot.on_accepted(b"a")
    assert slot.pending_since == 7.0


def test_the_record_of_the_accepted_body_is_kept_across_starts() -> None:
    slot = SnapshotSlot(accepted=b"kept")
    assert slot.skip(b"kept") is Skip.UNCHANGED
    assert slot.skip(b"other") is None


def test_a_change_is_urgent_only_when_a_turn_ended() -> None:
    slot = SnapshotSlot()
    slot.changed(1.0)
    assert slot.urgent is False
    slot.changed(2.0, urgent=True)
    assert slot.urgent is True
    slot.changed(3.0)
    assert slot.urgent is True  # stays urgent until taken


def test_taking_clears_the_change_and_an_acceptance_then_leaves_nothing_pending() -> None:
    slot = SnapshotSlot()
    slot.changed(5.0, urgent=True)
    assert slot.pending_since == 5.0
    slot.taking()
    assert slot.dirty is False
    assert slot.urgent is False
    slot.on_accepted(b"a")
    assert slot.pending_since is None


def test_a_change_after_the_take_is_what_stays_pending_after_acceptance() -> None:
    slot = SnapshotSlot()
    slot.changed(5.0)
    slot.taking()
    slot.changed(6.0)
    slot.changed(8.0)
    slot.on_accepted(b"a")
    assert slot.pending_since == 6.0


def test_an_acceptance_says_once_that_the_tasks_api_was_found() -> None:
    slot = SnapshotSlot()
    assert slot.on_accepted(b"a") is False
    assert slot.on_no_tasks_api() is True
    assert slot.on_no_tasks_api() is False
    assert slot.on_accepted(b"b") is True
    assert slot.no_tasks_api is False
    assert slot.on_accepted(b"c") is False
