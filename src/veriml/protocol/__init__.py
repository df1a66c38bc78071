"""Signed wire messages shared by the coordinator, the nodes and the clients (docs/network.md).

Pure: build, sign, parse and check. The transport (HTTP) lives in ``coordinator``, ``node`` and
``client``.
"""

from veriml.protocol.jobs import JOB_KINDS, JOB_TYPE, Job
from veriml.protocol.messages import (
    HEARTBEAT_TYPE,
    NODE_DESCRIPTOR_TYPE,
    Heartbeat,
    NodeDescriptor,
    format_time,
    open_message,
    parse_time,
    sign_message,
)
from veriml.protocol.prefill_check import (
    PREFILL_CHECK_PREDICATE_TYPE,
    PrefillCheck,
    open_prefill_check,
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
