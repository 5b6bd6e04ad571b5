"""Webhooks end to end: registration on the command API, and deliveries posted by the notifier
to a real HTTP receiver on this machine (http.server on a loopback port, stopped and started
to play a receiver that is down)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from iotp.event_shards import ensure_groups
from iotp.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    Severity,
    configuration_event_from_fields,
    to_fields,
)
from iotp.names import ALARM_EVENTS_STREAM, WEBHOOK_EVENTS_STREAM
from iotp.processes import iotp_environment
from iotp.settings import Settings
from notifications.delivery_log import DeliveryLog
from notifications.intake import NOTIFIER_GROUP, IntakeOptions, alarm_intake
from notifications.service import run_notifier
from notifications.signing import verify
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.dashboard_pages import dashboard_settings, run_page
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for
from tests.support.webhook_lab import lab_environment, lab_settings

SECRET = "a-webhook-secret-of-some-length"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the receiver answered

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver: records every whole request; answers ``failures`` 500s, then 204s."""

    port: int = 0
    failures: int = 0
    refused_devices: set[str] = field(default_factory=set)  # answered 500 while listed
    received: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/t0k3n?x=1"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a test kills the notifier): a real receiver
                    # sees a broken request, answers nothing and records no delivery.
                    self.close_connection = True
                    return
                request = Received({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    refused = request.event.get("device_id") in receiver.refused_devices
                    status = 500 if receiver.failures > 0 or refused else 204
                    receiver.failures -= 1
                    receiver.answered.append(status)
                    request.status = status
                    receiver.received.append(request)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # a registration must never fetch the URL
                with receiver.lock:
                    receiver.received.append(Received({"method": "GET"}, b""))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[Received]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers listen on 127.0.0.1: a lab's settings allow that, and encrypt secrets."""
    return lab_settings(settings)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def fast(settings: Settings, **changes: Any) -> Settings:
    """Settings with a notifier that retries within a test's time."""
    return settings.model_copy(
        update={
            "notify_backoff_first_seconds": 0.05,
            "notify_backoff_max_seconds": 0.3,
            "notify_poll_seconds": 0.05,
            "notify_block_ms": 50,
            "notify_timeout_seconds": 5.0,
            "notify_workers": 2,
            **changes,
        }
    )


@contextmanager
def notifier(settings: Settings) -> Iterator[None]:
    """``iotp notify``'s wiring in a thread of this process."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_notifier(settings, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the notifier did not stop"
    assert errors == []


def register(settings: Settings, url: str, **body: Any) -> str:
    with running_api(settings, relay=False) as client:
        answer = client.post("/webhooks", json={"url": url, **body}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    webhook_id: str = answer.json()["webhook_id"]
    return webhook_id


def raised(severity: Severity = "critical", device: str = "boiler-1") -> AlarmRaised:
    now = datetime.now(UTC)
    return AlarmRaised(
        device_id=device,
        alarm_id=uuid.uuid4(),
        rule_id="range:temp",
        metric="temp",
        condition="above",
        severity=severity,
        raised_at=now,
        value=99.5,
        threshold_high=60.0,
    )


def publish(client: redis.Redis, *events: AlarmRaised | AlarmAcknowledged | AlarmCleared) -> None:
    for event in events:
        client.xadd(ALARM_EVENTS_STREAM, to_fields(event))  # type: ignore[arg-type]


def deliveries(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(delivery_id, webhook_id, event_id, state, attempts) of every delivery."""
    return db.execute(
        "SELECT delivery_id::text, webhook_id::text, event_id::text, state, attempts"
        " FROM webhook_deliveries ORDER BY created_at"
    ).fetchall()


def logged_states(db: psycopg.Connection[Any]) -> dict[str, str]:
    rows = db.execute(
        "SELECT delivery_id::text, state FROM read_models.webhook_deliveries"
    ).fetchall()
    return dict(rows)


def all_delivered(db: psycopg.Connection[Any], count: int) -> bool:
    rows = deliveries(db)
    return len(rows) == count and all(row[3] == "delivered" for row in rows)


def counts(db: psycopg.Connection[Any]) -> tuple[int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM webhooks), (SELECT count(*) FROM outbox)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


# --- the command side ---------------------------------------------------------------------


def test_register_list_read_and_delete_without_showing_the_secret(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    with running_api(settings) as client:
        created = client.post(
            "/webhooks",
            json={"url": receiver.url, "secret": SECRET, "severities": ["critical"], "name": "ops"},
            headers=AUTH,
        )
        assert created.status_code == 201, created.text
        webhook_id = created.json()["webhook_id"]
        assert created.headers["location"] == f"/webhooks/{webhook_id}"
        plain = client.post("/webhooks", json={"url": "https://example.com/h"}, headers=AUTH)
        listed = client.get("/webhooks", headers=AUTH)
        one = client.get(f"/webhooks/{webhook_id}", headers=AUTH)
        deleted = client.delete(f"/webhooks/{webhook_id}", headers=AUTH)
        after = [
            client.get(f"/webhooks/{webhook_id}", headers=AUTH).status_code,
            client.delete(f"/webhooks/{webhook_id}", headers=AUTH).status_code,
            client.get(f"/webhooks/{uuid.uuid4()}", headers=AUTH).status_code,
        ]
        remaining = client.get("/webhooks", headers=AUTH).json()["webhooks"]
        wait_relayed(db)
    for answer in (created, listed, one, deleted):
        assert SECRET not in answer.text
    assert one.json() == {**created.json()}
    assert one.json()["has_secret"] is True and one.json()["severities"] == ["critical"]
    assert [w["webhook_id"] for w in listed.json()["webhooks"]] == [
        webhook_id,
        plain.json()["webhook_id"],
    ]
    assert plain.json()["severities"] == ["critical", "major", "minor", "warning"]
    assert plain.json()["has_secret"] is False
    assert deleted.status_code == 200 and deleted.json()["cancelled_deliveries"] == 0
    assert after == [404, 404, 404]
    assert [w["webhook_id"] for w in remaining] == [plain.json()["webhook_id"]]
    entries: Any = redis_client.xrange(WEBHOOK_EVENTS_STREAM)
    events = [configuration_event_from_fields(f) for _, f in entries]
    assert [e.type for e in events] == ["WebhookRegistered", "WebhookRegistered", "WebhookDeleted"]
    stream_text = json.dumps(redis_client.xrange(WEBHOOK_EVENTS_STREAM))
    assert SECRET not in stream_text and "t0k3n" not in stream_text
    assert receiver.events() == [], "a registration must never fetch the URL"


def _body(**changes: Any) -> dict[str, Any]:
    return {"url": "https://hooks.example.com/alarms", **changes}


HOSTILE: list[tuple[str, Any]] = [
    ("ftp scheme", _body(url="ftp://example.com/hook")),
    ("javascript scheme", _body(url="javascript:alert(document.cookie)")),
    ("file scheme", _body(url="file:///etc/passwd")),
    ("gopher scheme", _body(url="gopher://127.0.0.1:6379/_FLUSHALL")),
    ("no scheme", _body(url="hooks.example.com/alarms")),
    ("no host", _body(url="http:///alarms")),
    ("empty URL", _body(url="")),
    ("huge URL", _body(url="https://example.com/" + "a" * 5000)),
    ("credentials in URL", _body(url="https://admin:hunter2@example.com/")),
    ("space in URL", _body(url="https://example.com/a b")),
    ("newline in URL", _body(url="https://example.com/\r\nX-Injected: 1")),
    ("NUL in URL", _body(url="https://example.com/\x00")),
    ("bad port", _body(url="https://example.com:99999/")),
    ("URL not a string", _body(url=["https://example.com/"])),
    ("unknown severity", _body(severities=["critical", "apocalyptic"])),
    ("severity wrong case", _body(severities=["CRITICAL"])),
    ("no severities", _body(severities=[])),
    ("repeated severity", _body(severities=["minor", "minor"])),
    ("severities not a list", _body(severities="critical")),
    ("secret too short", _body(secret="short")),
    ("secret too long", _body(secret="s" * 257)),
    ("secret with control character", _body(secret="secret-secret-\x07-secret")),
    ("secret not a string", _body(secret=1234567890123456789)),
    ("name too long", _body(name="n" * 201)),
    ("name with NUL", _body(name="bad\x00name")),
    ("unknown field", _body(headers={"X-Admin": "1"})),
    ("missing URL", {"severities": ["critical"]}),
    ("body is a list", [_body()]),
]


@pytest.mark.parametrize(("case", "body"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_hostile_registration_is_422_and_writes_nothing(
    settings: Settings, db: psycopg.Connection[Any], case: str, body: Any
) -> None:
    with running_api(settings, relay=False) as client:
        answer = client.post(
            "/webhooks",
            content=json.dumps(body).encode(),
            headers={**AUTH, "content-type": "application/json"},
        )
    assert answer.status_code == 422, (case, answer.text)
    assert answer.json()["detail"], case
    assert counts(db) == (0, 0)


RAW: list[tuple[str, bytes, int]] = [
    ("bad JSON", b'{"url": "https://example.com/",', 422),
    ("not UTF-8", b'{"url": "https://example.com/\xff"}', 400),
    ("empty body", b"", 422),
    ("oversized body", b'{"url": "https://example.com/' + b"a" * 70_000 + b'"}', 413),
]


@pytest.mark.parametrize(("case", "raw", "status"), RAW, ids=[case for case, _, _ in RAW])
def test_unreadable_registration_is_refused_and_writes_nothing(
    settings: Settings, db: psycopg.Connection[Any], case: str, raw: bytes, status: int
) -> None:
    with running_api(settings, relay=False) as client:
        answer = client.post(
            "/webhooks", content=raw, headers={**AUTH, "content-type": "application/json"}
        )
    assert answer.status_code == status, (case, answer.text)
    assert "detail" in answer.json()
    assert counts(db) == (0, 0)


def test_bad_ids_and_missing_token_are_refused(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        refused = [
            client.get("/webhooks/not-a-uuid", headers=AUTH).status_code,
            client.delete("/webhooks/' OR 1=1 --", headers=AUTH).status_code,
            client.post("/webhooks", json=_body()).status_code,
            client.get("/webhooks").status_code,
            client.delete(f"/webhooks/{uuid.uuid4()}").status_code,
        ]
    assert refused == [422, 422, 401, 401, 401]
    assert counts(db) == (0, 0)


# --- deliveries -----------------------------------------------------------------------------


def test_a_delivery_is_signed_and_carries_its_idempotency_key(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    webhook_id = register(settings, receiver.url, secret=SECRET, name="ops")
    unsigned = Receiver().start()
    try:
        register(settings, unsigned.url)
        event = raised()
        publish(redis_client, event)
        with notifier(fast(settings)):
            wait_for(lambda: all_delivered(db, 2))
            wait_for(lambda: set(logged_states(db).values()) == {"delivered"}, timeout=10)
    finally:
        unsigned.stop()
    (got,) = receiver.events()
    (delivery_id, _, event_id, _, attempts) = next(
        row for row in deliveries(db) if row[1] == webhook_id
    )
    assert got.key == delivery_id
    assert got.headers["x-iotp-event"] == "AlarmRaised"
    assert got.headers["content-type"] == "application/json"
    assert abs(int(got.headers["x-iotp-timestamp"]) - datetime.now(UTC).timestamp()) < 600
    assert verify(got.body, SECRET, got.headers["x-iotp-signature"])
    assert AlarmRaised.model_validate_json(got.body) == event
    assert (event_id, attempts) == (str(event.event_id), 1)
    (plain,) = unsigned.events()
    assert "x-iotp-signature" not in plain.headers
    assert plain.body == got.body and plain.key != got.key
    log = db.execute(
        "SELECT webhook_name, webhook_origin, event_type, device_id, severity, attempts,"
        " last_status FROM read_models.webhook_deliveries WHERE delivery_id = %s",
        (delivery_id,),
    ).fetchone()
    assert log == (
        "ops",
        f"http://127.0.0.1:{receiver.port}",
        "AlarmRaised",
        "boiler-1",
        "critical",
        1,
        204,
    )


def test_only_the_chosen_severities_are_delivered(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    register(settings, receiver.url, severities=["critical"])
    everything = Receiver().start()
    try:
        register(settings, everything.url)
        major, critical = raised("major"), raised("critical")
        now = datetime.now(UTC)
        publish(
            redis_client,
            major,
            critical,
            AlarmAcknowledged(
                device_id="boiler-1",
                alarm_id=critical.alarm_id,
                acknowledged_by="ana",
                acknowledged_at=now,
            ),
            AlarmCleared(device_id="boiler-1", alarm_id=major.alarm_id, cleared_at=now),
            AlarmCleared(device_id="boiler-1", alarm_id=uuid.uuid4(), cleared_at=now),
        )
        with notifier(fast(settings)):
            wait_for(lambda: all_delivered(db, 2 + 5))
    finally:
        everything.stop()
    critical_only = [(r.event["type"], r.event["alarm_id"]) for r in receiver.events()]
    assert sorted(critical_only) == sorted(
        [("AlarmRaised", str(critical.alarm_id)), ("AlarmAcknowledged", str(critical.alarm_id))]
    )
    # A clear of an alarm whose raise was never seen goes only where every severity goes.
    assert len(everything.events()) == 5


def test_a_receiver_down_then_failing_then_up_gets_everything_once_per_key(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    port = receiver.port
    webhook_id = register(settings, receiver.url, secret=SECRET)
    receiver.stop()  # connection refused
    events = [raised("minor", device=f"dev-{n}") for n in range(6)]
    publish(redis_client, *events)
    # Two notifier processes side by side, two delivery workers each.
    with (
        notifier(fast(settings, notify_instance="a")),
        notifier(fast(settings, notify_instance="b")),
    ):
        wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM webhook_deliveries WHERE attempts >= 2"
                    " AND last_error LIKE 'ConnectError%%'"
                ).fetchone()
                == (6,)
            )
        )
        wait_for(lambda: set(logged_states(db).values()) == {"pending"})
        up = Receiver(port=port, failures=8).start()  # then 500s, then 204s
        try:
            wait_for(lambda: all_delivered(db, 6), timeout=30)
            wait_for(lambda: set(logged_states(db).values()) == {"delivered"}, timeout=10)
        finally:
            up.stop()
    got = up.events()
    assert up.answered.count(500) == 8 and up.answered.count(204) == 6
    by_key: dict[str, set[bytes]] = {}
    for request in got:
        by_key.setdefault(request.key, set()).add(request.body)
        assert verify(request.body, SECRET, request.headers["x-iotp-signature"])
    assert all(len(bodies) == 1 for bodies in by_key.values()), "one key, one event"
    accepted = [request.key for request in got if request.status == 204]
    assert sorted(accepted) == sorted(set(accepted)), "no crash here: no key accepted twice"
    delivered = {json.loads(next(iter(b)))["event_id"] for b in by_key.values()}
    assert delivered == {str(e.event_id) for e in events}
    assert {row[0] for row in deliveries(db)} == set(by_key)
    assert all(row[1] == webhook_id for row in deliveries(db))


def test_the_same_event_read_twice_makes_one_delivery(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    register(settings, receiver.url)
    event = raised()
    publish(redis_client, event, event)  # republished under a new stream id
    client = redis.Redis.from_url(settings.redis_url)
    ensure_groups(client, NOTIFIER_GROUP, (ALARM_EVENTS_STREAM,))
    intake = alarm_intake(
        client,
        lambda: psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row),
        IntakeOptions(consumer="test", batch_size=10, block_ms=10, claim_idle_ms=60_000),
    )
    entries: Any = client.xrange(ALARM_EVENTS_STREAM)
    batch = {ALARM_EVENTS_STREAM: [(i.decode(), f) for i, f in entries]}
    assert intake.deliver(batch).applied == 1
    assert intake.deliver(batch).applied == 0  # delivered again, as after a crash before XACK
    intake.part.close()
    client.close()
    with notifier(fast(settings)):
        wait_for(lambda: all_delivered(db, 1))
    assert len(receiver.events()) == 1


def test_a_deleted_webhook_gets_nothing_more(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    webhook_id = register(settings, receiver.url)
    receiver.stop()
    publish(redis_client, raised())
    with notifier(fast(settings)):
        wait_for(lambda: len(deliveries(db)) == 1 and deliveries(db)[0][4] >= 1)
        with running_api(settings, relay=False) as client:
            answer = client.delete(f"/webhooks/{webhook_id}", headers=AUTH)
        assert answer.json()["cancelled_deliveries"] == 1
        publish(redis_client, raised())
        wait_for(lambda: logged_states(db) and set(logged_states(db).values()) == {"failed"})
    assert [row[3] for row in deliveries(db)] == ["failed"]


def test_a_delivery_recorded_while_its_webhook_was_deleted_is_not_posted(
    settings: Settings, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhook_id = register(settings, receiver.url)
    with running_api(settings, relay=False) as client:
        assert client.delete(f"/webhooks/{webhook_id}", headers=AUTH).status_code == 200
    # As the intake's insert does when it read the webhook just before the deletion committed.
    db.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body)"
        " VALUES (%s, %s, 'AlarmRaised', %s)",
        (webhook_id, uuid.uuid4(), raised().model_dump_json()),
    )
    with notifier(fast(settings)):
        wait_for(lambda: list(logged_states(db).values()) == ["failed"])
    assert receiver.events() == []
    assert db.execute("SELECT attempts, last_error FROM webhook_deliveries").fetchall() == [
        (0, "webhook deleted")
    ]


def test_a_delivery_is_given_up_after_the_retry_window_and_the_dashboard_shows_it(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(settings, receiver.url, name="always failing")
    good = Receiver().start()
    try:
        register(settings, good.url, name="fine")
        receiver.failures = 1_000_000
        publish(redis_client, raised())
        with notifier(fast(settings, notify_give_up_hours=1 / 3600)):
            wait_for(
                lambda: sorted(logged_states(db).values()) == ["delivered", "failed"], timeout=20
            )
    finally:
        good.stop()
    (row,) = db.execute(
        "SELECT attempts, last_status, last_error FROM webhook_deliveries WHERE state = 'failed'"
    ).fetchall()
    assert row[0] >= 2 and row[1:] == (500, "HTTP 500")
    with dashboard_settings(settings, monkeypatch):
        page = run_page("notifications.py")
    assert not page.exception
    tiles = {metric.label: metric.value for metric in page.metric}
    assert tiles == {"pending": "0", "delivered": "1", "failed": "1"}
    assert "1 deliveries failed" in page.error[0].value
    table = page.dataframe[0].value
    assert sorted(table["webhook"]) == ["always failing", "fine"]
    assert sorted(table["last_error"].fillna("")) == ["", "HTTP 500"]


# --- crashes --------------------------------------------------------------------------------


def _notify_process(settings: Settings, log: Path) -> ServiceProcess:
    env = iotp_environment(
        {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "log_level": "INFO",
            "notify_backoff_first_seconds": "0.05",
            "notify_backoff_max_seconds": "0.3",
            "notify_poll_seconds": "0.05",
            "notify_block_ms": "50",
            "notify_claim_idle_ms": "200",
            **lab_environment(),
        },
        inherit_settings=False,
    )
    return ServiceProcess(["notify"], env, log, ready="notifying as")


def test_a_killed_notifier_and_a_dead_consumer_lose_nothing(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    register(settings, receiver.url, secret=SECRET)
    client = redis.Redis.from_url(settings.redis_url)
    ensure_groups(client, NOTIFIER_GROUP, (ALARM_EVENTS_STREAM,))
    # A notifier that reads two events and dies before recording or acknowledging them.
    early = [raised() for _ in range(2)]
    publish(redis_client, *early)
    taken: Any = client.xreadgroup(NOTIFIER_GROUP, "ghost", {ALARM_EVENTS_STREAM: ">"}, count=10)
    assert len(taken[0][1]) == 2
    process = _notify_process(settings, tmp_path / "notify.log").start()
    try:
        events = [raised(device=f"dev-{n}") for n in range(40)]
        # Half of the first twenty are refused until after the kill, so that the notifier
        # certainly dies with deliveries waiting for a retry, however fast it runs.
        receiver.refused_devices = {f"dev-{n}" for n in range(10, 20)}
        publish(redis_client, *events[:20])
        wait_for(lambda: any(row[3] == "delivered" for row in deliveries(db)), timeout=30)
        # Refused once and waiting for its retry (seconds away), not a delivery on its way.
        wait_for(lambda: any(row[3:] == ("pending", 1) for row in deliveries(db)), timeout=30)
        process.kill()  # SIGKILL, mid-stream: nothing gets to finish
        assert any(row[3] == "pending" for row in deliveries(db)), "killed with work left"
        with receiver.lock:
            receiver.refused_devices = set()
        publish(redis_client, *events[20:])
        process.start()
        wait_for(lambda: all_delivered(db, 42), timeout=60)
        wait_for(lambda: len(logged_states(db)) == 42, timeout=20)
        assert process.stop() == 0
    finally:
        if process.running():
            process.kill()
        client.close()
    expected = {str(e.event_id) for e in early + events}
    got = receiver.events()
    assert {r.event["event_id"] for r in got} == expected
    keys: dict[str, str] = {}
    for request in got:  # a key may come twice (after the kill), never for two events
        assert keys.setdefault(request.key, request.event["event_id"]) == request.event["event_id"]
    assert len(keys) == 42
    assert redis_client.xpending(ALARM_EVENTS_STREAM, NOTIFIER_GROUP)["pending"] == 0


@pytest.mark.usefixtures("fresh_boot")  # housekeeping's first round is not put off by uptime
def test_finished_deliveries_are_forgotten_after_the_retention(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    register(settings, receiver.url)
    publish(redis_client, *[raised() for _ in range(3)])
    with notifier(fast(settings)):
        wait_for(lambda: all_delivered(db, 3) and len(logged_states(db)) == 3)
    (old, *_) = deliveries(db)
    for table in ("webhook_deliveries", "read_models.webhook_deliveries"):
        db.execute(
            f"UPDATE {table} SET finished_at = now() - INTERVAL '31 days' WHERE delivery_id = %s",
            (old[0],),
        )

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row)

    log = DeliveryLog(connect, connect, threading.Event(), 0.1, keep_days=30)
    log.step()
    log.close()
    assert len(deliveries(db)) == 2 and old[0] not in logged_states(db)
    assert len(logged_states(db)) == 2
