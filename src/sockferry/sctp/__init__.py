"""SCTP: one-to-many endpoints over a userspace stack in UDP or the kernel's SCTP.

The backend names live here, free of imports, so that a command line can offer them
without loading an SCTP stack.
"""

from typing import Literal

# Backends a user can ask for; "auto" is the kernel's where it has SCTP, else udp.
Transport = Literal["auto", "kernel", "udp"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "kernel", "udp")
