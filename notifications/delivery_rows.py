"""Which deliveries an alarm event calls for: one row per (webhook, event), recorded once.

A webhook is notified of the events that happened after it was registered (by the event's
own time), so that recording an event again, whenever it happens, gives the same rows; the
UNIQUE (webhook, event) pair makes the second recording create nothing. Acknowledgements
and clears carry no severity: they take their alarm's, remembered when it was raised; one
whose raise was never seen goes to the webhooks that take every severity.
"""

from __future__ import annotations

from typing import Any

import psycopg

from iotp.events import SEVERITIES, AlarmAcknowledged, AlarmCleared, AlarmRaised

AlarmEvent = AlarmRaised | AlarmAcknowledged | AlarmCleared

_REMEMBER_SEVERITY = (
    "INSERT INTO notifier_alarm_severities (alarm_id, severity) VALUES (%s, %s)"
    " ON CONFLICT (alarm_id) DO NOTHING"
)
_SEVERITY_OF = "SELECT severity FROM notifier_alarm_severities WHERE alarm_id = %s"
_RECORD_DELIVERIES = """
INSERT INTO webhook_deliveries
    (webhook_id, event_id, event_type, alarm_id, device_id, severity, body)
SELECT w.webhook_id, %(event_id)s, %(event_type)s, %(alarm_id)s, %(device_id)s,
       %(severity)s, %(body)s
FROM webhooks w
WHERE w.deleted_at IS NULL
  AND w.created_at <= %(occurred_at)s
  AND CASE WHEN %(severity)s::text IS NULL THEN cardinality(w.severities) >= %(all)s
           ELSE %(severity)s::text = ANY (w.severities) END
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


def record_deliveries(conn: psycopg.Connection[Any], event: AlarmEvent) -> int:
    """Insert the deliveries ``event`` calls for (in the caller's transaction); how many are new."""
    if isinstance(event, AlarmRaised):
        conn.execute(_REMEMBER_SEVERITY, (event.alarm_id, event.severity))
        severity: str | None = event.severity
    else:
        row = conn.execute(_SEVERITY_OF, (event.alarm_id,)).fetchone()
        severity = row["severity"] if row else None
    cur = conn.execute(
        _RECORD_DELIVERIES,
        {
            "event_id": event.event_id,
            "event_type": event.type,
            "alarm_id": event.alarm_id,
            "device_id": event.device_id,
            "severity": severity,
            "body": event.model_dump_json(),
            "occurred_at": event.occurred_at,
            "all": len(SEVERITIES),
        },
    )
    return cur.rowcount
