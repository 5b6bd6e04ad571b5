"""Webhook secrets re-encrypted with the newest key: run by the notifier at every start.

Plain-text secrets stored before encryption existed, and secrets encrypted with an older key
of ``IOTP_NOTIFY_SECRET_KEY``, are rewritten encrypted with its first key, each row in the
one transaction that read it (so a secret is never lost half-way). After a start with
``new,old`` keys has finished, the old key can be dropped from the setting.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from iotp.webhook_secrets import KEY_SETTING, SecretBox, is_encrypted

logger = logging.getLogger(__name__)

_STORED = "SELECT webhook_id, secret FROM webhooks WHERE secret IS NOT NULL FOR UPDATE"
_REWRITE = "UPDATE webhooks SET secret = %s WHERE webhook_id = %s"


def reseal_secrets(conn: psycopg.Connection[Any], box: SecretBox) -> int:
    """Re-encrypt every stored secret not under the newest key; how many were rewritten.

    Without a key nothing is rewritten and a warning counts the secrets in plain text.
    A secret no key decrypts is left as it is, with a warning (its deliveries say why).
    """
    rewritten = plain = undecryptable = 0
    with conn.transaction():
        for row in conn.execute(_STORED).fetchall():
            stored: str = row["secret"]
            if not box.has_key:
                plain += not is_encrypted(stored)
                undecryptable += is_encrypted(stored)
                continue
            try:
                new = box.resealed(stored)
            except ValueError:  # SecretUndecryptable
                undecryptable += 1
                continue
            if new is not None:
                conn.execute(_REWRITE, (new, row["webhook_id"]))
                rewritten += 1
    if plain:
        logger.warning(
            "%s webhook secrets are stored in plain text: set %s to encrypt them",
            plain,
            KEY_SETTING,
        )
    if undecryptable:
        logger.warning(
            "%s webhook secrets cannot be decrypted with %s: their deliveries are not posted",
            undecryptable,
            KEY_SETTING,
        )
    if rewritten:
        logger.info("re-encrypted %s webhook secrets with the newest key", rewritten)
    return rewritten
