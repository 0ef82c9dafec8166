"""The store's rules, without a database: rows in as dicts, decisions out."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge.model import EXPIRED_ERROR, Attempt, DeliveryWork, Job, NewJob, PollRecord, Recorded
from bridge.store import rules
from bridge.store.base import BadCursor, Conflict, open_cursor, seal_cursor

T0 = 1_800_000_000.0


def job_row(**kw: Any) -> dict[str, Any]:
    """A row of the job queries: a job that registered when its watch had 2 polls."""
    empty = ("outcome", "up_status", "up_error", "up_result", "last_polled_at", "w_error")
    empty += ("last_attempt_at", "last_response_status", "last_error", "next_attempt_at")
    row = dict.fromkeys((*empty, "delivered_at"))
    row |= {"seq": 7, "id": "job_a", "tenant": "alpha", "project": "default", "kind": "video"}
    row |= {"token": 9}
    row |= {"callback_url": "http://127.0.0.1:9/h", "metadata": '{"k":"v"}', "state": "tracking"}
    row |= {"polls_base": 2, "polls": 0, "attempts": 0, "created_at": T0, "updated_at": T0}
    row |= {"deadline_at": T0 + 100, "w_status": "processing", "w_result": '{"p":1}', "w_polls": 5}
    return row | {"w_last_polled_at": T0 + 4, "w_next_poll_at": T0 + 6} | kw


def job(**kw: Any) -> Job:
    return rules.job_from_row(job_row(**kw))


def new(tenant: str = "alpha", metadata: str | None = '{"k":"v"}') -> NewJob:
    return NewJob(tenant, "video", 9, "http://127.0.0.1:9/h", metadata)


def poll(**kw: Any) -> PollRecord:
    base: dict[str, Any] = {
        "started_at": T0 + 10,
        "polled_at": T0 + 11,
        "next_poll_at": T0 + 15,
        "not_found": 0,
        "failures": 0,
        "interval": 4.0,
        "answered": True,
        "status": "finished",
        "result_json": '{"r":2}',
        "changed": True,
    }
    return PollRecord(**(base | kw))


WATCH = {"kind": "video", "status": "processing", "error": None, "result": '{"p":1}'}
WATCH |= {"polls": 5, "last_change_at": T0 + 3}


# -- reading ---------------------------------------------------------------------------------


def test_a_tracking_job_shows_its_watch_live() -> None:
    j = job()
    assert (j.upstream_status, j.upstream_result, j.polls) == ("processing", '{"p":1}', 3)
    assert (j.last_polled_at, j.next_poll_at, j.metadata) == (T0 + 4, T0 + 6, '{"k":"v"}')


def test_a_job_that_stopped_tracking_keeps_what_it_saw() -> None:
    j = job(state="delivering", up_status="finished", up_result="{}", polls=4, last_polled_at=T0)
    assert (j.upstream_status, j.upstream_result, j.polls) == ("finished", "{}", 4)
    assert (j.last_polled_at, j.next_poll_at) == (T0, None)


def test_a_page_has_a_cursor_only_when_more_follow() -> None:
    rows = [job_row(seq=n, id=f"job_{n}") for n in (9, 8, 7)]
    jobs, cursor = rules.page(rows, 2)
    assert [j.id for j in jobs] == ["job_9", "job_8"] and cursor == 8
    assert rules.page(rows, 3)[1] is None


# -- registration ----------------------------------------------------------------------------


def test_a_token_belongs_to_the_tenant_that_registered_it_first() -> None:
    with pytest.raises(Conflict, match="another tenant"):
        rules.registration("beta", None, new())
    assert rules.registration("alpha", None, new()) is None
    assert rules.registration(None, None, new()) is None  # the watch was made just now


def test_an_existing_job_answers_a_repeat_and_refuses_other_metadata() -> None:
    existing = job(metadata='{"a":1,"b":2}')
    assert rules.registration("alpha", existing, new(metadata='{"b":2,"a":1}')) is existing
    with pytest.raises(Conflict, match="other metadata"):
        rules.registration("alpha", existing, new(metadata='{"a":1}'))
    with pytest.raises(Conflict):
        rules.registration("alpha", existing, new(metadata=None))
    assert rules.same_metadata(None, None) and not rules.same_metadata('{"a":1}', '{"a":true}')


def test_a_newcomer_rearms_an_ended_watch_and_pulls_a_live_one_forward() -> None:
    assert rules.arm(None, T0 + 1) == rules.Arming(T0 + 1, afresh=True)
    assert rules.arm(T0 + 5, T0 + 1) == rules.Arming(T0 + 1, afresh=False)
    assert rules.arm(T0 + 1, T0 + 5) == rules.Arming(T0 + 1, afresh=False)


# -- polls -----------------------------------------------------------------------------------


def test_an_answer_replaces_what_the_watch_saw_and_anything_else_keeps_it() -> None:
    assert rules.seen(WATCH, poll()) == {
        "status": "finished",
        "error": None,
        "result": '{"r":2}',
        "polls": 6,
        "last_polled_at": T0 + 11,
    }
    kept = rules.seen(WATCH, poll(answered=False, status=None, result_json=None))
    assert (kept["status"], kept["result"], kept["polls"]) == ("processing", '{"p":1}', 6)


@pytest.mark.parametrize(
    ("outcome", "next_poll_at"),
    [
        (None, T0 + 15),  # the record's plan
        ("finished", T0 + 11),  # a job joined during the deciding poll: poll again now
    ],
)
def test_when_a_watch_is_polled_next(outcome: str | None, next_poll_at: float) -> None:
    # While a job still tracks the watch; record_watch idles one nobody tracks (contract tests).
    rec = poll(outcome=outcome)
    assert rules.polled(WATCH, rec, rules.seen(WATCH, rec))["next_poll_at"] == next_poll_at


def test_last_change_moves_only_on_a_change() -> None:
    for changed, expected in ((True, T0 + 11), (False, T0 + 3)):
        rec = poll(changed=changed)
        assert rules.polled(WATCH, rec, rules.seen(WATCH, rec))["last_change_at"] == expected


def test_an_outcome_goes_to_every_job_and_the_first_come_leased() -> None:
    rec = poll(outcome="finished")
    seen = rules.seen(WATCH, rec)
    jobs = [job_row(id="job_a", polls_base=2), job_row(id="job_b", polls_base=5, metadata=None)]
    updates, recorded = rules.outcome(jobs, rec, seen, owner="me", lease=30.0, deliver=1)
    assert [(u["job_id"], u["polls"], u["lease_owner"], u["lease"]) for u in updates] == [
        ("job_a", 4, "me", 30.0),
        ("job_b", 1, None, None),
    ]
    body = json.loads(updates[1]["body"])  # job b's own callback: its id, its metadata
    assert body["type"] == "video.conversion.finished"
    assert body["timestamp"] == "2027-01-15T08:00:11Z"
    assert body["data"] | {"job_id": "job_b", "result": {"r": 2}, "metadata": None} == body["data"]
    assert all(u["at"] == u["last_polled_at"] == T0 + 11 for u in updates)
    assert recorded == [
        Recorded(
            "job_a",
            "video",
            9,
            "finished",
            DeliveryWork(
                "job_a",
                "alpha",
                "video",
                9,
                "http://127.0.0.1:9/h",
                updates[0]["body"],
                0,
                0,
                T0 + 11,
                T0 + 11,
                T0 + 11,
            ),
        ),
        Recorded("job_b", "video", 9, "finished"),
    ]


def test_expiry_keeps_what_the_watch_saw_last() -> None:
    row = job_row(status="processing", error=None, result='{"p":1}', polls=5, last_polled_at=T0)
    update = rules.expiry(row, T0 + 100)
    assert (update["outcome"], update["polls"], update["last_polled_at"]) == ("expired", 3, T0)
    assert (update["up_status"], update["at"], update["lease_owner"]) == (
        "processing",
        T0 + 100,
        None,
    )
    assert b'"error":"' + EXPIRED_ERROR.encode() in update["body"]


# -- the API's changes and attempts -----------------------------------------------------------


def test_cancel_freezes_what_the_job_saw() -> None:
    assert rules.cancel(job()) == {
        "up_status": "processing",
        "up_error": None,
        "up_result": '{"p":1}',
        "polls": 3,
        "last_polled_at": T0 + 4,
    }
    delivering = job(state="delivering", up_status="finished", polls=4, last_polled_at=T0)
    assert rules.cancel(delivering) == {
        "up_status": "finished",
        "up_error": None,
        "up_result": None,
        "polls": 4,
        "last_polled_at": T0,
    }
    assert rules.cancel(job(state="canceled")) is None
    for ended in ("delivered", "undeliverable"):
        with pytest.raises(Conflict, match=f"^the job is already {ended}$"):
            rules.cancel(job(state=ended))


def test_only_an_ended_delivery_is_redelivered() -> None:
    rules.redeliver(job(state="delivered"))
    rules.redeliver(job(state="undeliverable"))
    for state in ("tracking", "delivering", "canceled"):
        with pytest.raises(Conflict, match=f"this one is {state}$"):
            rules.redeliver(job(state=state))


ATTEMPT = Attempt(n=2, at=T0 + 20, duration_ms=500, response_status=204, error=None)
DELIVERING = {"state": "delivering", "attempts": 1, "next_attempt_at": T0 + 20}
DELIVERING |= {"delivered_at": None, "ended_at": None}


def test_a_delivered_attempt_ends_the_job() -> None:
    after, decided = rules.attempted(
        DELIVERING, ATTEMPT, next_state="delivered", next_attempt_at=None
    )
    assert decided
    assert after | {"n": 2} == after  # the attempt's own row, too
    assert (after["state"], after["attempts"], after["finished_at"]) == ("delivered", 2, T0 + 20.5)
    assert (after["delivered_at"], after["ended_at"], after["ended"]) == (
        T0 + 20.5,
        T0 + 20.5,
        True,
    )


def test_a_failed_attempt_schedules_the_next() -> None:
    after, decided = rules.attempted(
        DELIVERING | {"attempts": 5}, ATTEMPT, next_state="delivering", next_attempt_at=T0 + 60
    )
    assert decided and after["attempts"] == 5  # a late record never counts back
    assert (after["state"], after["next_attempt_at"], after["ended_at"], after["ended"]) == (
        "delivering",
        T0 + 60,
        None,
        False,
    )


def test_an_attempt_on_a_canceled_job_counts_but_changes_nothing_else() -> None:
    canceled = DELIVERING | {"state": "canceled", "next_attempt_at": None, "ended_at": T0 + 19}
    after, decided = rules.attempted(
        canceled, ATTEMPT, next_state="delivered", next_attempt_at=None
    )
    assert not decided
    assert (after["state"], after["delivered_at"], after["ended_at"], after["ended"]) == (
        "canceled",
        None,
        T0 + 19,
        False,
    )
    assert (after["attempts"], after["response_status"]) == (2, 204)


# -- the listing cursor ------------------------------------------------------------------------


def test_a_sealed_cursor_opens_only_for_its_tenant_and_key() -> None:
    key, other_key = b"k" * 32, b"o" * 32
    for position in (0, 1, 2**53, 2**63 - 1):
        cursor = seal_cursor(key, "alpha", position)
        assert open_cursor(key, "alpha", cursor) == position
        for who, k in (("beta", key), ("alpha", other_key), ("alph", key), ("alpha\x00", key)):
            with pytest.raises(BadCursor):
                open_cursor(k, who, cursor)
    # Nothing of the position shows: with one nonce, neighbours differ everywhere after it.
    nonce = bytes(16)
    a, b = (seal_cursor(key, "alpha", p, nonce) for p in (1000, 1001))
    assert a[:22] == b[:22] and a[-22:] != b[-22:]
    # Every single-bit change of the sealed bytes is refused.
    raw = base64.urlsafe_b64decode(a + "=")
    for i in range(len(raw) * 8):
        bent = bytearray(raw)
        bent[i // 8] ^= 1 << (i % 8)
        text = base64.urlsafe_b64encode(bytes(bent)).decode().rstrip("=")
        with pytest.raises(BadCursor):
            open_cursor(key, "alpha", text)


@pytest.mark.parametrize("junk", ["", "x", "djE6MTAw", "=" * 55, "é" * 55, "A" * 55, "A" * 56])
def test_garbage_is_no_cursor(junk: str) -> None:
    with pytest.raises(BadCursor) as err:
        open_cursor(b"k" * 32, "alpha", junk)
    assert str(err.value) == "cursor is not one this server gave out"


# -- paused time ---------------------------------------------------------------------------------


def test_pauses_that_overlap_or_extend_widen_one_span() -> None:
    assert rules.widen(None, 10, 15) == (None, (10, 15))
    assert rules.widen((10, 15), 12, 14) == (None, (10, 15))  # inside: nothing new
    assert rules.widen((10, 15), 15, 25) == (None, (10, 25))  # growing backoff: one span
    assert rules.widen((10, 15), 20, 30) == ((10, 15), (20, 30))  # a gap: settle the first


def test_a_lift_ends_the_span_unless_another_pause_holds_it() -> None:
    assert rules.narrow(None, 12, None) is None
    assert rules.narrow((10, 25), 12, None) == (10, 12)
    assert rules.narrow((10, 25), 12, 20) == (10, 20)
    assert rules.narrow((10, 15), 30, None) == (10, 15)  # ended before the lift
