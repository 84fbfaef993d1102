"""An in-process store for tests and demos (``memory://``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sessionmw.records import SessionRecord


class MemoryBackend:
    """A dict of records guarded by a lock. Not shared between processes."""

    def __init__(self, records: Iterable[SessionRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records = {record.session_id: record for record in records}

    def put(self, record: SessionRecord) -> None:
        with self._lock:
            self._records[record.session_id] = record

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._records.pop(session_id, None)

    def lookup(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    def __len__(self) -> int:
        return len(self._records)
