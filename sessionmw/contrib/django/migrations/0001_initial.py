"""The ``device_sessions`` table, the SQL store's layout (written by hand).

A table the SQL store already created (``sessionmw sessions migrate``) is taken over
with ``manage.py migrate sessionmw --fake-initial`` (or ``Sessions.create_schema()``
on the ``django`` store, which first adds the columns and indexes an older table
lacks).
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="DeviceSession",
            fields=[
                ("session_id", models.TextField(primary_key=True, serialize=False)),
                ("user_id", models.TextField()),
                (
                    "status",
                    models.TextField(choices=[("active", "active"), ("revoked", "revoked")]),
                ),
                ("expires_at", models.FloatField(blank=True, null=True)),
                ("issued_at", models.FloatField(blank=True, null=True)),
                ("data", models.TextField(blank=True, null=True)),
                ("last_seen", models.FloatField(blank=True, null=True)),
                ("idp_sid", models.TextField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "device session",
                "db_table": "device_sessions",
                "indexes": [
                    models.Index(fields=["user_id"], name="ix_device_sessions_user_id"),
                    models.Index(fields=["idp_sid"], name="ix_device_sessions_idp_sid"),
                ],
            },
        ),
    ]
