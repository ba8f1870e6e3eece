"""``record-parts``: the parts of the complete steps etcd's record retains, against storage.

The record is hand-made; the storage is a real directory (``FileStorage``)
holding the objects the parts name, some of them then torn or removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from record_support import KEYS, LEADER, Record, complete, joined

from dtr.chaos.checker_record import replay_record
from dtr.chaos.checker_record_parts import check_parts, storage_verifier
from dtr.chaos.record_replay import RecordFacts
from dtr.storage import StoredObject, open_storage


def part_of(worker: str, generation: int, stored: StoredObject, **more: Any) -> dict[str, Any]:
    """A ``PartRecord``'s fields for ``stored``, as the coordinator writes them."""
    return {
        "worker_id": worker,
        "generation": generation,
        "uri": stored.uri,
        "size_bytes": stored.size_bytes,
        "algorithm": stored.checksum.algorithm,
        "hex_digest": stored.checksum.hex_digest,
        "format_version": 1,
        "manifest_uri": None,
        "replicated": False,
        **more,
    }


def facts_for(parts: Mapping[str, dict[str, Any]], *, step: int = 10) -> RecordFacts:
    """A record where ``parts`` (of generation 1) complete ``step`` for members a and b."""
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    puts = [(KEYS.checkpoint_commit(step, w), p) for w, p in parts.items()]
    done = complete(step, 1, 2)
    record.leader_txn(term, *puts, (KEYS.checkpoint_complete(step), done))
    return replay_record(record.events, KEYS).facts


def verify_all(root: Path, facts: RecordFacts) -> list[str]:
    with storage_verifier(f"file://{root}", {}) as verify:
        result = check_parts(facts, verify)
    assert result.checked == 2
    return [v.message for v in result.violations]


def test_intact_parts_verify_and_torn_or_missing_ones_are_named(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    a = storage.write("step-10/a.dtr", [b"a's state" * 100])
    b = storage.write("step-10/b.dtr", [b"b's state" * 100])
    facts = facts_for({"a": part_of("a", 1, a), "b": part_of("b", 1, b)})
    assert verify_all(tmp_path, facts) == []
    (tmp_path / "step-10" / "a.dtr").write_bytes(b"torn")
    (tmp_path / "step-10" / "b.dtr").unlink()
    found = verify_all(tmp_path, facts)
    assert len(found) == 2
    assert found[0].startswith("step 10: a's part does not verify:") and a.uri in found[0]
    assert found[1].startswith("step 10: b's part does not verify:") and "missing" in found[1]


def test_a_replicated_part_whose_manifest_names_another_object_is_caught(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    shared = storage.write("step-10/replicated.1-x.dtr", [b"the same state" * 50])
    other = storage.write("step-10/replicated.2-y.dtr", [b"another state" * 50])
    manifest = {"uri": other.uri, "size_bytes": other.size_bytes, "job_life": "7/u"}
    manifest |= {"algorithm": "crc32c", "hex_digest": other.checksum.hex_digest}
    written = storage.write("step-10/replicated.1-x.json", [json.dumps(manifest).encode()])
    fields = {"manifest_uri": written.uri, "replicated": True}
    facts = facts_for({w: part_of(w, 1, shared, **fields) for w in ("a", "b")})
    found = verify_all(tmp_path, facts)
    assert found == [
        f"step 10: {w}'s part and its manifest {written.uri} disagree on uri, size_bytes, "
        "hex_digest"
        for w in ("a", "b")
    ]


def test_only_the_parts_of_the_generation_a_retained_step_completed_under_are_checked() -> None:
    facts = facts_for({"a": {"generation": 1}, "b": {"generation": 1}, "c": {"generation": 0}})
    seen: list[Mapping[str, Any]] = []

    def verify(part: Mapping[str, Any]) -> str | None:
        seen.append(part)
        return None if part["generation"] == 1 else "of the wrong generation was checked"

    assert check_parts(facts, verify).ok
    assert len(seen) == 2
