"""The ``device_sessions`` table as a Django model (SPEC sections 6 and 11).

The layout is exactly the SQL store's (:mod:`sessionmw.backends.sql`): the same table
name, column names, types and index names, so ``backend = "django"`` and
``backend = "postgresql://…"`` can share one table. Times are epoch seconds in float
columns (not ``DateTimeField``), ``data`` is JSON text, the session ID is the
primary key. The model is what the admin shows and what the ``django`` store reads
and writes; apps create and revoke sessions through :class:`sessionmw.Sessions`, which
also pushes the revocation events (a plain ``.update(status="revoked")`` on this model
would leave every worker's cache serving the session until its TTL).

This module imports nothing from sessionmw's adapters or gate: loading the model
never builds a gate.
"""

from __future__ import annotations

from django.db import models

from sessionmw._log import hash_id

__all__ = ["DeviceSession"]

STATUS_CHOICES = [("active", "active"), ("revoked", "revoked")]


class DeviceSession(models.Model):
    """One row of ``device_sessions``."""

    session_id: models.TextField[str, str] = models.TextField(primary_key=True)
    user_id: models.TextField[str, str] = models.TextField()
    status: models.TextField[str, str] = models.TextField(choices=STATUS_CHOICES)
    expires_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    issued_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    data: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    last_seen: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    idp_sid: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "device_sessions"
        verbose_name = "device session"
        # The SQL store's index names (ix_{table}_{column}), so either side finds them.
        indexes = [
            models.Index(fields=["user_id"], name="ix_device_sessions_user_id"),
            models.Index(fields=["idp_sid"], name="ix_device_sessions_idp_sid"),
        ]

    def __str__(self) -> str:
        # Never the raw ID: it is a bearer credential, and __str__ reaches logs and
        # the admin's messages. The short hash is the one sessionmw's logs use.
        return f"session {hash_id(self.session_id)} of {self.user_id}"
