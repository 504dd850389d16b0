"""The emulator container's health check: healthy only when both of its APIs answer.

REST `/readyz` is 200 once DuckDB and the catalog respond (the processor creates its
tables there); the gRPC port is the Storage Write API it appends through, which starts
separately. Exit 0 healthy, 1 not.
"""
import socket
import sys
import urllib.request

REST_PORT, GRPC_PORT = 9050, 9060

try:
    # urlopen raises on any status >= 400 (/readyz answers 503 while degraded).
    with urllib.request.urlopen(f"http://127.0.0.1:{REST_PORT}/readyz", timeout=3):
        pass
    socket.create_connection(("127.0.0.1", GRPC_PORT), timeout=3).close()
except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
