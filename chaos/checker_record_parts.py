"""``record-parts``: every part of every retained complete step verifies against storage.

etcd's record says which complete steps the job still keeps at the end and
their parts (``RecordFacts.retained``: the last life's complete steps, each
with its parts of the generation it completed under). Each part's object
must be in storage with the size and checksum its commit record names; a
replicated part's manifest, when named, must describe that same object.
Unlike the worker-side ``checkpoints`` check (which verifies the steps the
status service lists), this one trusts nothing but the record.

The checker is pure: ``check_parts`` takes the verify function, so tests
inject one; ``storage_verifier`` is the real one (``dtr.storage``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dtr.errors import DtrError
from dtr.storage import Checksum, Storage, open_storage

from .checker_base import CheckResult, Findings
from .record_replay import RecordFacts

#: A part's fields (``PartRecord``) -> None when it verifies, else why not.
Verify = Callable[[Mapping[str, Any]], str | None]


def check_parts(facts: RecordFacts, verify: Verify) -> CheckResult:
    """Verify every part of every complete step the record retains at the end."""
    findings = Findings("record-parts")
    for retained in facts.retained:
        for worker, part in retained.parts.items():
            findings.checked += 1
            problem = verify(part)
            if problem is not None:
                findings.flag(f"step {retained.step}: {worker}'s part {problem}")
    return findings.result()


@contextmanager
def storage_verifier(uri: str, options: Mapping[str, Any]) -> Iterator[Verify]:
    """A ``Verify`` reading the run's checkpoint storage (closed on exit)."""
    storage = open_storage(uri, **options)
    try:
        yield lambda part: _verify(storage, part)
    finally:
        storage.close()


def _verify(storage: Storage, part: Mapping[str, Any]) -> str | None:
    try:
        expected = Checksum.of(str(part["algorithm"]), str(part["hex_digest"]))
        size = int(part["size_bytes"])
        storage.read_verified(storage.name_of(str(part["uri"])), expected, size)
        manifest_uri = part.get("manifest_uri")
        if manifest_uri:
            return _check_manifest(storage, str(manifest_uri), part)
    except DtrError as err:
        return f"does not verify: {err}"
    except (KeyError, TypeError, ValueError) as err:
        return f"record is unreadable: {err!r}"
    return None


def _check_manifest(storage: Storage, uri: str, part: Mapping[str, Any]) -> str | None:
    """A replicated part's manifest must name the very object the record names."""
    raw = json.loads(bytes(storage.read(storage.name_of(uri))))
    fields = ("uri", "size_bytes", "algorithm", "hex_digest")
    differ = [f for f in fields if str(raw.get(f)) != str(part.get(f))]
    if differ:
        return f"and its manifest {uri} disagree on {', '.join(differ)}"
    return None
