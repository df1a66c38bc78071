"""Every entry of a running network's log, read as any client reads it: through its tiles,
each tile proven against a checkpoint signed by the pinned log key."""

from __future__ import annotations

from veriml.tlog import LogClient, NoteVerifier


def logged_entries(url: str, vkey: str) -> list[bytes]:
    """The entries of the log of the coordinator at ``url``, up to its current checkpoint."""
    with LogClient(url + "/log/", NoteVerifier.from_vkey(vkey)) as log:
        signed = log.checkpoint()
        reader = log.hash_reader(signed)
        raw: list[bytes] = []
        bundle = 0
        while len(raw) < signed.checkpoint.size:
            raw += reader.read_entry_bundle(bundle)
            bundle += 1
    assert len(raw) == signed.checkpoint.size
    return raw
