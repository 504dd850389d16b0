"""Offline launcher for bqemulator 1.4.0.

Usage: python bqemu_launcher.py start --rest-port 9050 --grpc-port 9060 \
           [--data-dir DIR | --ephemeral] [--project my-proj] [--log-level warning]

Patches (applied before bqemulator.cli.main() runs):
  1. DuckDBEngine._load_spatial / _load_format_extensions: no network INSTALL;
     try LOAD of an already-cached extension, ignore failure (GEOGRAPHY unused).
  2. SnapshotManager.capture(kind="AUTO") -> None: no per-write full-table copy
     into _bqemulator_snapshots (time travel disabled; USER snapshots still work).
     record_change() still publishes TableDataChanged (cache/MV invalidation).
  3. DuckDBEngine.connection: threads other than the main (event-loop) thread
     get their own thread-local `connection.cursor()` (gRPC sync handlers run on
     grpc.aio's thread pool while REST runs on the loop thread).
"""
from __future__ import annotations

import threading

from bqemulator.storage import engine as _engine_mod
from bqemulator.versioning import snapshots as _snap_mod

DuckDBEngine = _engine_mod.DuckDBEngine
SnapshotManager = _snap_mod.SnapshotManager


# 1. offline extensions ------------------------------------------------------
def _load_spatial_offline(self) -> None:
    try:
        self._connection.execute("LOAD spatial")
    except Exception:  # noqa: BLE001 - not cached / offline: skip GEOGRAPHY
        pass


def _no_format_extensions(self) -> None:
    return None


DuckDBEngine._load_spatial = _load_spatial_offline
DuckDBEngine._load_format_extensions = _no_format_extensions

# 2. skip AUTO snapshots -----------------------------------------------------
_orig_capture = SnapshotManager.capture


def _capture(self, project_id, dataset_id, table_id, *, kind="AUTO"):
    if kind == "AUTO":
        return None
    return _orig_capture(self, project_id, dataset_id, table_id, kind=kind)


SnapshotManager.capture = _capture

# 3. per-thread cursors ------------------------------------------------------
_orig_connection = DuckDBEngine.connection  # a property object
_tls = threading.local()


def _connection(self):
    base = _orig_connection.fget(self)  # raises InternalError if not started
    if threading.current_thread() is threading.main_thread():
        return base
    cur = getattr(_tls, "cursor", None)
    if cur is None or getattr(_tls, "base", None) is not base:
        cur = base.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        _tls.cursor, _tls.base = cur, base
    return cur


DuckDBEngine.connection = property(_connection)

# 4. A bigger default executor. grpc.aio runs the emulator's synchronous AppendRows
#    handler on the event loop's default executor (min(32, cpus + 4) threads: 6 here).
#    When a client dies mid-call (the crash tests SIGKILL the processor), the handler
#    stays blocked on the request iterator and keeps its thread for good; after six
#    such deaths every new append waits forever. Each dead client now leaks one of 512.
import concurrent.futures.thread as _cft

_orig_pool_init = _cft.ThreadPoolExecutor.__init__


def _pool_init(self, max_workers=None, thread_name_prefix="", *args, **kwargs):
    if max_workers is None and thread_name_prefix == "asyncio":
        max_workers = 512
    _orig_pool_init(self, max_workers, thread_name_prefix, *args, **kwargs)


_cft.ThreadPoolExecutor.__init__ = _pool_init

if __name__ == "__main__":
    from bqemulator.cli import main

    main()
