"""sockferry: files and messages over plain sockets (TCP, UDP/TFTP, SCTP)."""

__version__ = "0.1.0"
