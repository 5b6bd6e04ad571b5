"""HTTP telemetry's pure parts: the inbox's bound and answers, Basic credentials, the cache."""

from __future__ import annotations

import asyncio
import base64
import threading
from datetime import UTC, datetime

import pytest

from ingest.device_credentials import DeviceCredentials
from ingest.http_inbox import Completion, HttpInbox, HttpMessage, Offer, http_message
from ingest.http_telemetry import answer, basic_credentials
from ingest.payloads import ParsedMessage, Reading, Rejection
from iotp.password_hash import hash_password

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
STORED = ParsedMessage("dev-1", (Reading(NOW, {"temp": 1.0}),), ())
STOP = threading.Event()


async def offered(inbox: HttpInbox, payload: bytes = b"{}") -> tuple[Offer, Completion]:
    completion = Completion(asyncio.get_running_loop())
    return inbox.offer(http_message("dev-1", payload, NOW, completion)), completion


def test_a_request_is_answered_once_its_batch_is_acknowledged() -> None:
    async def scenario() -> ParsedMessage | None:
        inbox = HttpInbox(max_pending=10, max_pending_bytes=1000)
        offer, completion = await offered(inbox)
        assert offer is Offer.ACCEPTED
        (message,) = inbox.take(100, 10_000, 0.0, STOP)
        assert isinstance(message, HttpMessage) and message.topic == "POST /telemetry/dev-1"
        message.parsed = STORED
        # The writer thread acknowledges; the request's loop wakes.
        threading.Thread(target=inbox.ack, args=([message],)).start()
        result = await asyncio.wait_for(completion.wait(), 5)
        assert inbox.pending() == 0
        return result

    assert asyncio.run(scenario()) == STORED


def test_the_inbox_is_full_while_requests_wait_for_their_commit() -> None:
    async def scenario() -> None:
        inbox = HttpInbox(max_pending=2, max_pending_bytes=1000)
        assert (await offered(inbox))[0] is Offer.ACCEPTED
        assert (await offered(inbox))[0] is Offer.ACCEPTED
        taken = inbox.take(100, 10_000, 0.0, STOP)  # taken is not answered: still pending
        assert (await offered(inbox))[0] is Offer.FULL
        inbox.ack(taken)
        assert (await offered(inbox))[0] is Offer.ACCEPTED
        assert (await offered(inbox, b"x" * 999))[0] is Offer.FULL  # over the bytes

    asyncio.run(scenario())


def test_a_closed_inbox_refuses_and_abandons_what_it_holds() -> None:
    async def scenario() -> None:
        inbox = HttpInbox(max_pending=10, max_pending_bytes=1000)
        _, waiting = await offered(inbox)
        inbox.close()
        assert (await offered(inbox))[0] is Offer.CLOSED
        assert not inbox.drained(0.01)
        inbox.abandon()
        assert await asyncio.wait_for(waiting.wait(), 5) is None  # not stored: send again
        assert inbox.drained(0.01)

    asyncio.run(scenario())


def test_answers_say_what_was_stored_and_what_was_dead_lettered() -> None:
    bad = Rejection("invalid_value", "metric 'hum' is not a number", 1)
    partly = answer(ParsedMessage("dev-1", STORED.readings, (bad,)))
    assert partly.status_code == 202
    assert partly.body == (
        b'{"readings":1,"rejected":[{"loc":["body",1],'
        b'"msg":"metric \'hum\' is not a number","type":"invalid_value"}]}'
    )
    refused = answer(ParsedMessage("dev-1", (), (Rejection("invalid_json", "not JSON"),)))
    assert refused.status_code == 422
    assert b'"type":"invalid_json"' in refused.body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"dev-1:pa:ss").decode(), ("dev-1", "pa:ss")),
        ("basic " + base64.b64encode(b"dev-1:").decode(), ("dev-1", "")),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b":pw").decode(), None),
        ("Basic not*base64", None),
        ("Basic " + base64.b64encode(b"dev\xff:pw").decode(), None),
        ("Bearer abc", None),
        (None, None),
    ],
)
def test_basic_credentials(header: str | None, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected


def test_a_passed_password_is_remembered_briefly_and_only_that_one() -> None:
    stored = {"dev-1": hash_password("right")}
    lookups: list[str] = []
    now = [100.0]

    async def lookup(device_id: str) -> str | None:
        lookups.append(device_id)
        return stored.get(device_id)

    async def scenario() -> None:
        credentials = DeviceCredentials(lookup, ttl=30, clock=lambda: now[0])
        assert await credentials.verify("dev-1", "right")
        assert await credentials.verify("dev-1", "right")
        assert len(lookups) == 1  # remembered
        assert not await credentials.verify("dev-1", "wrong")  # never from the cache
        assert not await credentials.verify("dev-2", "right")
        now[0] += 31
        stored["dev-1"] = hash_password("rotated")
        assert not await credentials.verify("dev-1", "right")  # the window ended
        assert await credentials.verify("dev-1", "rotated")

    asyncio.run(scenario())
