"""Signed wire messages shared by the coordinator, the nodes and the clients (docs/network.md).

Pure: build, sign, parse and check. The transport (HTTP) lives in ``coordinator``, ``node`` and
``client``.
"""

from veriml.protocol.messages import (
    HEARTBEAT_TYPE,
    JOB_TYPE,
    NODE_DESCRIPTOR_TYPE,
    Heartbeat,
    Job,
    NodeDescriptor,
    format_time,
    open_message,
    parse_time,
    sign_message,
)

__all__ = [
    "HEARTBEAT_TYPE",
    "JOB_TYPE",
    "NODE_DESCRIPTOR_TYPE",
    "Heartbeat",
    "Job",
    "NodeDescriptor",
    "format_time",
    "open_message",
    "parse_time",
    "sign_message",
]
