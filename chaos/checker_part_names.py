"""``record-part-names``: one object name, one content, across the whole of etcd's record.

Part objects are immutable ("A worker saves a step it already saved",
docs/failure-semantics.md): every save writes a name of its own, so a name
a commit record names always holds the bytes that record describes. If two
part records anywhere in the record (any step, generation or job life) name
the same URI with a different size or checksum, a save overwrote an object
a commit had already named, and the earlier part no longer verifies.

``record-parts`` verifies only the steps retention kept at the end; this
check needs no storage and forgets nothing, so an overwrite of a step that
was later deleted is still seen. It is what sees the ``parts-overwritten``
mutant (``dtr.mutants``): a worker that saves a step again (a replay after
a restart under its id moved the generation) writes the same fixed name,
and commits it under the new generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import RecordEvent

NAME = "record-part-names"


def check_part_names(events: Iterable[RecordEvent], keys: JobKeys) -> CheckResult:
    """Flag each part put whose URI an earlier part put named with other content."""
    seen: dict[str, tuple[int, str, object, object]] = {}  # uri -> revision, key, size, digest
    checked = 0
    violations: list[str] = []
    for event in events:
        if event.kind != "put" or not event.key.startswith(keys.checkpoint_steps_prefix):
            continue
        part = json.loads(event.value)
        uri = str(part.get("uri", ""))
        if not uri:
            continue
        checked += 1
        content = (part.get("size_bytes"), part.get("hex_digest"))
        first = seen.setdefault(uri, (event.revision, event.key, *content))
        if first[2:] != content:
            name = event.key[len(keys.checkpoint_steps_prefix) :]
            earlier = first[1][len(keys.checkpoint_steps_prefix) :]
            violations.append(
                f"revision {event.revision}: part {name} names {uri} with size {content[0]}, "
                f"checksum {content[1]}; revision {first[0]} ({earlier}) named it with size "
                f"{first[2]}, checksum {first[3]}: the object was overwritten"
            )
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult(NAME, not violations, checked, kept, left_off=left)
