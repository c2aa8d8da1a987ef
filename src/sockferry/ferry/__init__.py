"""The ferry protocol (docs/protocol.md): its pure cores, client, server and copies."""

DEFAULT_PORT = 2345  # where a server listens unless told otherwise
