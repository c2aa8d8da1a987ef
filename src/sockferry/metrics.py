"""Prometheus metrics of the servers (``--metrics ADDR``), one registry per process.

The servers call the few methods of :class:`Metrics`; a server run without
``--metrics`` holds :data:`OFF`, whose methods do nothing, so no code path asks whether
metrics are on.  prometheus_client is imported only when they are.  Names follow the
Prometheus conventions: ``_total`` counters, base units (bytes, seconds), and a
``transport`` label (``tcp``, ``unix``, ``sctp``, ``tftp``) on everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sockferry.addresses import Address

# Transfer sizes from a 4 KiB file to 64 GiB; durations from 1 ms to an hour.
SIZE_BUCKETS = tuple(float(4 ** n * 1024) for n in range(0, 14))
DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0,
                    1200.0, 3600.0)


class Metrics:
    """The counters, gauges and histograms, in their own registry."""

    def __init__(self) -> None:
        import prometheus_client as p  # noqa: PLC0415 - servers with --metrics only

        self.registry = p.CollectorRegistry()
        r = self.registry
        self._open = p.Gauge("sockferry_connections_open", "Connections or associations "
                             "being served now", ["transport"], registry=r)
        self._connections = p.Counter("sockferry_connections_total", "Connections or "
                                      "associations ended, by outcome", ["transport",
                                                                         "outcome"],
                                      registry=r)
        self._auth_failures = p.Counter("sockferry_authentication_failures_total",
                                        "Clients that failed to authenticate",
                                        ["transport"], registry=r)
        self._started = p.Counter("sockferry_transfers_started_total", "Transfers begun",
                                  ["transport", "direction"], registry=r)
        self._ended = p.Counter("sockferry_transfers_total", "Transfers ended, by outcome "
                                "(committed, refused, failed)", ["transport", "direction",
                                                                 "outcome"], registry=r)
        self._errors = p.Counter("sockferry_transfer_errors_total", "Transfers that did not "
                                 "commit, by error kind", ["transport", "kind"], registry=r)
        self._bytes_in = p.Counter("sockferry_received_bytes_total", "Bytes received from "
                                   "clients (on the wire)", ["transport"], registry=r)
        self._bytes_out = p.Counter("sockferry_sent_bytes_total", "Bytes sent to clients "
                                    "(on the wire)", ["transport"], registry=r)
        self._durations = p.Histogram("sockferry_transfer_duration_seconds", "Time from a "
                                      "transfer's request to its end", ["transport",
                                                                        "direction"],
                                      buckets=DURATION_BUCKETS, registry=r)
        self._sizes = p.Histogram("sockferry_transfer_size_bytes", "Size of committed "
                                  "transfers", ["transport", "direction"],
                                  buckets=SIZE_BUCKETS, registry=r)
        self._limits = p.Counter("sockferry_limit_trips_total", "Requests or clients turned "
                                 "away by a limit, by limit", ["transport", "limit"],
                                 registry=r)
        p.ProcessCollector(registry=r)  # memory, CPU, descriptors of the server
        self._server: Any = None

    def serve(self, address: Address) -> str:
        """Serve the text format on ``address`` (HOST:PORT) from a thread; returns where."""
        import prometheus_client  # noqa: PLC0415

        from sockferry.addresses import HostPort, format_sockaddr  # noqa: PLC0415
        from sockferry.errors import UsageError  # noqa: PLC0415

        if not isinstance(address, HostPort):
            raise UsageError("--metrics takes HOST:PORT, not a unix: path")
        host = address.host or "::"
        try:
            self._server, _ = prometheus_client.start_http_server(
                address.port, host, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {host}:{address.port}: "
                             f"{exc.strerror or exc} (is the port taken? pick another "
                             "--metrics port)") from None
        return format_sockaddr(self._server.server_address)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- what the servers report ---------------------------------------------------------

    def connection_opened(self, transport: str) -> None:
        self._open.labels(transport).inc()

    def connection_closed(self, transport: str, outcome: str, bytes_in: int,
                          bytes_out: int) -> None:
        self._open.labels(transport).dec()
        self._connections.labels(transport, outcome).inc()
        self._bytes_in.labels(transport).inc(bytes_in)
        self._bytes_out.labels(transport).inc(bytes_out)
        if outcome == "authentication_failed":
            self._auth_failures.labels(transport).inc()

    def transferred(self, transport: str, direction: str, nbytes: int) -> None:
        """Bytes moved by a transport whose connections do not count them (TFTP)."""
        counter = self._bytes_in if direction == "upload" else self._bytes_out
        counter.labels(transport).inc(nbytes)

    def transfer_started(self, transport: str, direction: str, count: int = 1) -> None:
        self._started.labels(transport, direction).inc(count)

    def transfer_ended(self, transport: str, direction: str, outcome: str, nbytes: int,
                       seconds: float, error: str | None = None) -> None:
        """``outcome``: committed, refused or failed; ``error`` the kind, if not committed."""
        self._ended.labels(transport, direction, outcome).inc()
        self._durations.labels(transport, direction).observe(seconds)
        if outcome == "committed":
            self._sizes.labels(transport, direction).observe(nbytes)
        else:
            self._errors.labels(transport, error or outcome).inc()

    def limit_tripped(self, transport: str, limit: str) -> None:
        self._limits.labels(transport, limit).inc()


class _Off(Metrics):
    """Metrics off: every report is a no-op (and prometheus_client is not imported)."""

    def __init__(self) -> None:  # nothing to build
        pass

    def serve(self, address: Address) -> str:
        raise AssertionError("metrics are off")

    def close(self) -> None:
        pass

    def connection_opened(self, transport: str) -> None:
        pass

    def connection_closed(self, transport: str, outcome: str, bytes_in: int,
                          bytes_out: int) -> None:
        pass

    def transferred(self, transport: str, direction: str, nbytes: int) -> None:
        pass

    def transfer_started(self, transport: str, direction: str, count: int = 1) -> None:
        pass

    def transfer_ended(self, transport: str, direction: str, outcome: str, nbytes: int,
                       seconds: float, error: str | None = None) -> None:
        pass

    def limit_tripped(self, transport: str, limit: str) -> None:
        pass


OFF: Metrics = _Off()
