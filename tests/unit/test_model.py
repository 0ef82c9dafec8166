"""The pure decisions, by table: no network, no clock but the one passed in."""

from __future__ import annotations

import json

import pytest

from bridge import model
from bridge.pacing import PauseBoard, TakePause

SCHEDULE = (5.0, 300.0, 1800.0)


@pytest.mark.parametrize(
    ("attempts", "retry_after", "rand", "expected"),
    [
        (1, None, 0.5, 5.0),  # the first retry waits the schedule's first delay
        (1, None, 0.0, 4.0),  # -20%
        (1, None, 1.0, 6.0),  # +20%
        (2, None, 0.5, 300.0),
        (3, None, 1.0, 1800.0),  # +20% would pass the longest delay: capped
        (1, 60.0, 0.5, 60.0),  # Retry-After raises the wait
        (2, 60.0, 0.5, 300.0),  # ... but never lowers it
        (1, 9999.0, 0.5, 1800.0),  # ... and the longest delay caps it
        (4, None, 0.5, None),  # the schedule is spent
    ],
)
def test_retry_delay(
    attempts: int, retry_after: float | None, rand: float, expected: float | None
) -> None:
    got = model.retry_delay(attempts, SCHEDULE, retry_after, rand)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_callback_body_shape() -> None:
    body = model.callback_body(
        job_id="job_01jdx2v9q4k8m3n6p7r5s2t0wa",
        project="shop",
        kind="video",
        token=426339926,
        outcome="finished",
        error=None,
        result_json='{"uuid":"u","thumbnails_group_uuid":"g~1"}',
        metadata_json='{"order":"A-1001"}',
        seen_at=1_800_000_072.5,
    )
    assert json.loads(body) == {
        "type": "video.conversion.finished",
        "timestamp": "2027-01-15T08:01:12.500Z",
        "data": {
            "job_id": "job_01jdx2v9q4k8m3n6p7r5s2t0wa",
            "project": "shop",
            "kind": "video",
            "token": 426339926,
            "status": "finished",
            "error": None,
            "result": {"uuid": "u", "thumbnails_group_uuid": "g~1"},
            "metadata": {"order": "A-1001"},
        },
    }


def test_ids() -> None:
    a, b = model.new_job_id(1.0), model.new_job_id(2.0)
    assert a < b and len(a) == 30
    assert model.webhook_id(a) == "msg_" + a[4:]


def test_redact_url() -> None:
    assert model.redact_url("https://u:p@h.example/x?q=1") == "https://***@h.example/x?q=1"
    assert model.redact_url("https://h.example/x") == "https://h.example/x"


def test_pause_board() -> None:
    now = [100.0]
    board = PauseBoard(lambda: now[0])
    assert board.describe()["state"] == "ok"
    board.take(
        TakePause("default:rejected:video", "video conversion refused (400)", 110.0, "video")
    )
    assert board.paused(now[0]) == ((), (("default", "video"),))
    assert board.until("default", "video", now[0]) == 110.0
    assert board.until("default", "document", now[0]) == 100.0
    board.take(TakePause("default:throttled", "throttled (429)", 105.0))
    assert board.paused(now[0]) == (("default",), (("default", "video"),))
    assert board.until("default", "document", now[0]) == 105.0
    assert board.until("other", "document", now[0]) == 100.0
    now[0] = 111.0
    assert board.describe()["state"] == "ok"
