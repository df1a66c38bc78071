"""Signed wire messages shared by the coordinator, the nodes and the clients (docs/network.md).

Pure: build, sign, parse and check. The transport (HTTP) lives in ``coordinator``, ``node`` and
``client``.
"""

from veriml.protocol.messages import (
    HEARTBEAT_TYPE,
    JOB_KINDS,
    JOB_TYPE,
    NODE_DESCRIPTOR_TYPE,
    PREFILL_CHECK_PREDICATE_TYPE,
    Heartbeat,
    Job,
    NodeDescriptor,
    PrefillCheck,
    format_time,
    open_message,
    open_prefill_check,
    parse_time,
    sign_message,
    sign_prefill_check,
)

__all__ = [
    "HEARTBEAT_TYPE",
    "JOB_KINDS",
    "JOB_TYPE",
    "NODE_DESCRIPTOR_TYPE",
    "PREFILL_CHECK_PREDICATE_TYPE",
    "Heartbeat",
    "Job",
    "NodeDescriptor",
    "PrefillCheck",
    "format_time",
    "open_message",
    "open_prefill_check",
    "parse_time",
    "sign_message",
    "sign_prefill_check",
]
