"""The alarm read model: events XADDed to the alarm stream, folded by a real aggregator into
PostgreSQL, read through the query API, and recomputed from the write store by `iotp rebuild`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from iotp.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    Envelope,
    Severity,
    WebhookRegistered,
    to_fields,
)
from iotp.group_reader import GroupReader
from iotp.names import ALARM_EVENTS_STREAM
from iotp.processes import iotp_environment
from iotp.settings import Settings
from read_models.app import create_query_app
from read_models.rebuild import rebuild
from read_models.service import aggregator_for
from tests.support.alarm_traffic import register, store_and_evaluate
from tests.support.api_client import running_api, wait_relayed
from tests.support.processes import run_iotp
from tests.support.servers import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def raised(
    alarm_id: UUID,
    device: str = "boiler-1",
    severity: Severity = "major",
    at: datetime = T0,
    metric: str | None = "temp",
) -> AlarmRaised:
    return AlarmRaised(
        device_id=device,
        alarm_id=alarm_id,
        rule_id=f"range:{metric}" if metric else "offline",
        metric=metric,
        condition="above" if metric else "offline",
        severity=severity,
        raised_at=at,
        value=55.5 if metric else None,
        threshold_high=50.0 if metric else None,
        occurred_at=at + timedelta(seconds=1),
    )


def acknowledged(
    alarm_id: UUID, device: str = "boiler-1", at: datetime = T0 + timedelta(minutes=5)
) -> AlarmAcknowledged:
    return AlarmAcknowledged(
        device_id=device,
        alarm_id=alarm_id,
        acknowledged_by="Ada",
        acknowledged_at=at,
        note="on it",
        occurred_at=at,
    )


def cleared(
    alarm_id: UUID, device: str = "boiler-1", at: datetime = T0 + timedelta(minutes=9)
) -> AlarmCleared:
    return AlarmCleared(
        device_id=device,
        alarm_id=alarm_id,
        cleared_at=at,
        value=42.0,
        reason="back in range",
        occurred_at=at + timedelta(seconds=1),
    )


@pytest.fixture
def bus(settings: Settings) -> Iterator[redis.Redis]:
    """A client that reads raw bytes, as the aggregator's does."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


Aggregator = GroupReader[Any]


@pytest.fixture
def aggregator(settings: Settings, bus: redis.Redis) -> Iterator[Aggregator]:
    quick = settings.model_copy(update={"aggregator_block_ms": 20})
    agg = aggregator_for(quick, bus)
    yield agg
    agg.part.close()


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"query_max_page_size": 5})
    with TestClient(create_query_app(configured)) as client:
        yield client


def publish(bus: redis.Redis, *events: Envelope) -> None:
    for event in events:
        bus.xadd(ALARM_EVENTS_STREAM, to_fields(event))  # type: ignore[arg-type]


def apply_all(agg: Aggregator) -> int:
    """Run the aggregator until the streams are drained; the events it applied."""
    from iotp.event_shards import ensure_groups

    ensure_groups(agg.client, agg.options.group, agg.options.streams)
    applied = 0
    while True:
        outcome = agg.step()
        applied += outcome.applied
        if outcome.entries == 0:
            return applied


def rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM read_models.alarms ORDER BY alarm_id").fetchall()


def one(api: TestClient, alarm_id: UUID) -> dict[str, Any]:
    answer = api.get(f"/alarms/{alarm_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_each_lifecycle_reads_back(
    bus: redis.Redis, aggregator: Aggregator, api: TestClient
) -> None:
    full, unacknowledged, open_ = uuid4(), uuid4(), uuid4()
    publish(bus, raised(full), raised(unacknowledged, device="pump-2", severity="critical"))
    publish(bus, raised(open_, device="pump-3", metric=None, severity="warning"))
    apply_all(aggregator)
    alarm = one(api, full)
    assert alarm["state"] == "active" and alarm["severity"] == "major"
    assert alarm["device_id"] == "boiler-1" and alarm["metric"] == "temp"
    assert alarm["raised_at"] == "2026-03-01T12:00:00Z" and alarm["value"] == 55.5
    assert alarm["acknowledged_by"] is None and alarm["cleared_at"] is None
    assert one(api, open_)["metric"] is None and one(api, open_)["condition"] == "offline"

    publish(bus, acknowledged(full))
    apply_all(aggregator)
    alarm = one(api, full)
    assert alarm["state"] == "acknowledged" and alarm["acknowledged_by"] == "Ada"
    assert alarm["note"] == "on it" and alarm["acknowledged_at"] == "2026-03-01T12:05:00Z"

    publish(bus, cleared(full), cleared(unacknowledged, device="pump-2"))
    apply_all(aggregator)
    alarm = one(api, full)
    assert alarm["state"] == "cleared" and alarm["cleared_at"] == "2026-03-01T12:09:00Z"
    assert alarm["acknowledged_by"] == "Ada" and alarm["clear_reason"] == "back in range"
    skipped = one(api, unacknowledged)
    assert skipped["state"] == "cleared" and skipped["acknowledged_by"] is None
    assert one(api, open_)["state"] == "active"


def test_duplicates_change_nothing(
    bus: redis.Redis, aggregator: Aggregator, db: psycopg.Connection[Any]
) -> None:
    alarm_id = uuid4()
    events = [raised(alarm_id), acknowledged(alarm_id), cleared(alarm_id)]
    publish(bus, *events)
    assert apply_all(aggregator) == 3
    before = rows(db)
    # Redelivered after a crash before XACK, and the same events republished under new ids.
    entries: Any = bus.xrange(ALARM_EVENTS_STREAM)
    aggregator.deliver({ALARM_EVENTS_STREAM: [(i.decode(), f) for i, f in entries]})
    publish(bus, *events)
    assert apply_all(aggregator) == 0
    # A restarted alarm process raises the same alarm again, as a new event (new event_id).
    publish(bus, raised(alarm_id), acknowledged(alarm_id))
    assert apply_all(aggregator) == 2
    assert rows(db) == before


def test_any_arrival_order_gives_the_same_alarm(
    bus: redis.Redis, aggregator: Aggregator, db: psycopg.Connection[Any], api: TestClient
) -> None:
    makers = (raised, acknowledged, cleared)
    ids = []
    for order in itertools.permutations(range(3)):
        alarm_id = uuid4()
        ids.append(alarm_id)
        for index in order:  # each event in a batch of its own
            publish(bus, makers[index](alarm_id))
            apply_all(aggregator)
    # And all three in one batch, clear first.
    batched = uuid4()
    ids.append(batched)
    publish(bus, cleared(batched), acknowledged(batched), raised(batched))
    apply_all(aggregator)
    found = {row[0]: row[1:] for row in rows(db)}
    assert len(found) == 7 and len({found[i] for i in ids}) == 1
    assert one(api, ids[0])["state"] == "cleared"


def test_a_clear_before_its_raise_waits_for_it(
    bus: redis.Redis, aggregator: Aggregator, api: TestClient
) -> None:
    alarm_id = uuid4()
    publish(bus, cleared(alarm_id))
    apply_all(aggregator)
    assert api.get(f"/alarms/{alarm_id}", headers=AUTH).status_code == 404
    assert api.get("/alarms", headers=AUTH).json()["total"] == 0
    assert api.get("/fleet", headers=AUTH).json()["alarms"]["active"] == 0
    publish(bus, raised(alarm_id, severity="minor"))
    apply_all(aggregator)
    alarm = one(api, alarm_id)
    assert alarm["state"] == "cleared" and alarm["severity"] == "minor"
    assert alarm["rule_id"] == "range:temp" and alarm["cleared_value"] == 42.0


def test_events_of_other_types_are_ignored(
    bus: redis.Redis, aggregator: Aggregator, db: psycopg.Connection[Any], api: TestClient
) -> None:
    alarm_id = uuid4()
    publish(
        bus,
        WebhookRegistered(
            webhook_id=uuid4(), url_origin="https://hooks.example", severities=(), has_secret=False
        ),
    )
    # A type this version does not know (an alarm rule's), and an entry that is no event.
    bus.xadd(
        ALARM_EVENTS_STREAM,
        {
            "type": "AlarmRuleCreated",
            "event_id": str(uuid4()),
            "schema_version": "1",
            "data": '{"type": "AlarmRuleCreated", "rule_id": "r1"}',
        },
    )
    bus.xadd(ALARM_EVENTS_STREAM, {"garbage": "\x00\xff"})
    publish(bus, raised(alarm_id))
    apply_all(aggregator)
    assert len(rows(db)) == 1 and one(api, alarm_id)["state"] == "active"
    pending: Any = bus.xpending(ALARM_EVENTS_STREAM, aggregator.options.group)
    assert pending["pending"] == 0


def _seed_many(bus: redis.Redis, aggregator: Aggregator) -> list[UUID]:
    """Ten alarms a minute apart: severities in turn, devices a/b, states by index."""
    severities: list[Severity] = ["critical", "major", "minor", "warning"]
    ids = []
    for n in range(10):
        alarm_id = UUID(int=n + 1)
        ids.append(alarm_id)
        device = "dev-a" if n % 2 == 0 else "dev-b"
        at = T0 + timedelta(minutes=n)
        publish(bus, raised(alarm_id, device, severities[n % 4], at))
        if n % 3 == 1:
            publish(bus, acknowledged(alarm_id, device, at + timedelta(seconds=30)))
        if n % 3 == 2:
            publish(bus, cleared(alarm_id, device, at + timedelta(seconds=40)))
    apply_all(aggregator)
    return ids


def _ids(answer: Any) -> list[int]:
    assert answer.status_code == 200, answer.text
    return [UUID(item["alarm_id"]).int - 1 for item in answer.json()["items"]]


def test_filters_and_pages(bus: redis.Redis, aggregator: Aggregator, api: TestClient) -> None:
    _seed_many(bus, aggregator)
    first = api.get("/alarms", headers=AUTH, params={"limit": 5})
    assert first.json()["total"] == 10 and first.json()["limit"] == 5
    assert _ids(first) == [9, 8, 7, 6, 5]  # newest first
    assert _ids(api.get("/alarms", headers=AUTH, params={"limit": 5, "offset": 5})) == [
        4,
        3,
        2,
        1,
        0,
    ]
    past = api.get("/alarms", headers=AUTH, params={"offset": 20}).json()
    assert past["items"] == [] and past["total"] == 10
    assert _ids(api.get("/alarms", headers=AUTH, params={"device_id": "dev-b"})) == [9, 7, 5, 3, 1]
    assert _ids(api.get("/alarms", headers=AUTH, params={"severity": "critical"})) == [8, 4, 0]
    assert _ids(api.get("/alarms", headers=AUTH, params={"state": "acknowledged"})) == [7, 4, 1]
    assert _ids(api.get("/alarms", headers=AUTH, params={"state": "cleared"})) == [8, 5, 2]
    assert _ids(api.get("/alarms", headers=AUTH, params={"state": "active"})) == [9, 6, 3, 0]
    window = {"from": "2026-03-01T12:02:00Z", "to": "2026-03-01T12:05:00"}  # naive is UTC
    assert _ids(api.get("/alarms", headers=AUTH, params=window)) == [4, 3, 2]
    both = {"device_id": "dev-a", "state": "active", "severity": "critical"}
    assert _ids(api.get("/alarms", headers=AUTH, params=both)) == [0]
    assert api.get("/alarms", headers=AUTH, params={"device_id": "nobody"}).json()["total"] == 0


def test_fleet_counts_alarms_not_cleared(
    bus: redis.Redis, aggregator: Aggregator, api: TestClient
) -> None:
    assert api.get("/fleet", headers=AUTH).json()["alarms"] == {
        "critical": 0,
        "major": 0,
        "minor": 0,
        "warning": 0,
        "active": 0,
        "acknowledged": 0,
    }
    _seed_many(bus, aggregator)
    fleet = api.get("/fleet", headers=AUTH).json()
    # Not cleared: 0 1 3 4 6 7 9 -> critical 0,4; major 1,9; minor 6; warning 3,7.
    assert fleet["alarms"] == {
        "critical": 2,
        "major": 2,
        "minor": 1,
        "warning": 2,
        "active": 4,
        "acknowledged": 3,
    }
    assert fleet["registered"] == 0  # the existing keys are still there


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/alarms", {"state": "open"}),
        ("/alarms", {"severity": "fatal"}),
        ("/alarms", {"device_id": "a b"}),
        ("/alarms", {"device_id": "x" * 65}),
        ("/alarms", {"device_id": "'; DROP TABLE read_models.alarms; --"}),
        ("/alarms", {"from": "yesterday"}),
        ("/alarms", {"to": "2026-13-01T00:00:00Z"}),
        ("/alarms", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}),
        ("/alarms", {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}),
        ("/alarms", {"limit": "0"}),
        ("/alarms", {"limit": "6"}),
        ("/alarms", {"limit": "x"}),
        ("/alarms", {"offset": "-1"}),
        ("/alarms", {"offset": "99999999999"}),
        ("/alarms/not-a-uuid", {}),
        ("/alarms/12345", {}),
        ("/alarms/" + "0" * 300, {}),
    ],
)
def test_hostile_parameters_are_refused(
    api: TestClient, db: psycopg.Connection[Any], path: str, params: dict[str, str]
) -> None:
    answer = api.get(path, headers=AUTH, params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"]
    assert db.execute("SELECT count(*) FROM read_models.alarms").fetchone() == (0,)


def test_unknown_alarm_and_no_token(api: TestClient) -> None:
    missing = api.get(f"/alarms/{uuid4()}", headers=AUTH)
    assert missing.status_code == 404 and "not known" in missing.json()["detail"]
    assert api.get("/alarms").status_code == 401
    assert (
        api.get(f"/alarms/{uuid4()}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )


def test_rebuild_takes_the_alarms_from_the_write_store(
    settings: Settings, bus: redis.Redis, aggregator: Aggregator, db: psycopg.Connection[Any]
) -> None:
    """Alarms raised and cleared by the alarm process and acknowledged through the command API
    are rebuilt equal to what the aggregators folded from their events, after Redis lost the
    alarm stream."""
    env = iotp_environment(
        {"database_url": settings.database_url, "redis_url": settings.redis_url},
        inherit_settings=False,
    )
    with (
        running_api(settings) as commands,
        psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn,
    ):
        for device in ("acknowledged", "active", "cleared"):
            register(commands, device)
            store_and_evaluate(db, conn, device, [(1, 70.0), (2, 71.0), (3, 72.0)])
        ids = dict(db.execute("SELECT device_id, alarm_id FROM alarms").fetchall())
        for device in ("acknowledged", "cleared"):
            ack = {"acknowledged_by": "Ada", "note": "on it"}
            answer = commands.post(f"/alarms/{ids[device]}/acknowledge", json=ack, headers=AUTH)
            assert answer.status_code == 200, answer.text
        store_and_evaluate(db, conn, "cleared", [(4, 20.0), (5, 21.0), (6, 22.0)])
        wait_relayed(db)
        assert apply_all(aggregator) == 3 + 6  # the registrations, and the alarm events
        live = rows(db)
        assert [(row[1], row[-2]) for row in sorted(live, key=lambda r: r[1])] == [
            ("acknowledged", "acknowledged"),
            ("active", "active"),
            ("cleared", "cleared"),
        ]

        bus.delete(ALARM_EVENTS_STREAM)  # Redis lost it: the rebuild needs none of it
        for run in ("iotp rebuild", "in process"):  # from a model gone wrong, then again
            db.execute("UPDATE read_models.alarms SET severity = 'minor', note = 'tampered'")
            db.execute(
                "INSERT INTO read_models.alarms (alarm_id, device_id, updated_at)"
                " VALUES (%s, 'ghost', now())",
                (uuid4(),),
            )
            if run == "iotp rebuild":
                result = run_iotp("rebuild", env=env, timeout=120)
                assert result.returncode == 0, result.stderr
            else:
                rebuild(settings)
            assert rows(db) == live

        # The aggregator carries on after the rebuild: new events folded, the model still
        # what a rebuild makes of the write store.
        store_and_evaluate(db, conn, "acknowledged", [(4, 20.0), (5, 21.0), (6, 22.0)])
        wait_relayed(db)
        assert apply_all(aggregator) == 1
        folded = rows(db)
        assert [(row[1], row[-2]) for row in sorted(folded, key=lambda r: r[1])] == [
            ("acknowledged", "cleared"),
            ("active", "active"),
            ("cleared", "cleared"),
        ]
        rebuild(settings)
        assert rows(db) == folded


def test_alarm_events_relayed_after_a_rebuild_change_nothing_it_copied(
    settings: Settings, bus: redis.Redis, aggregator: Aggregator, db: psycopg.Connection[Any]
) -> None:
    """An alarm event published after the rebuild's positions may already be in its snapshot
    of the write store; folding it into the copied row changes nothing, updated_at included."""
    with (
        running_api(settings, relay=False) as commands,
        psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn,
    ):
        for device in ("acknowledged", "active", "cleared"):
            register(commands, device)
            store_and_evaluate(db, conn, device, [(1, 70.0), (2, 71.0), (3, 72.0)])
        ids = dict(db.execute("SELECT device_id, alarm_id FROM alarms").fetchall())
        for device in ("acknowledged", "cleared"):
            ack = {"acknowledged_by": "Ada"}
            answer = commands.post(f"/alarms/{ids[device]}/acknowledge", json=ack, headers=AUTH)
            assert answer.status_code == 200, answer.text
        store_and_evaluate(db, conn, "cleared", [(4, 20.0), (5, 21.0), (6, 22.0)])
    rebuild(settings)  # nothing relayed yet: every alarm comes from the write store alone
    copied = rows(db)
    assert len(copied) == 3
    with running_api(settings):
        wait_relayed(db)
    assert apply_all(aggregator) == 3 + 6
    assert rows(db) == copied
