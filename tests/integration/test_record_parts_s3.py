"""``record-parts`` against a real S3 server (``moto_server`` on loopback, ``s3_server``).

The run's storage options (an endpoint URL) reach the verifier as they reach
``_Run._capture``; an object overwritten behind the record's back is named.
"""

from __future__ import annotations

import uuid

import boto3
from record_support import KEYS, LEADER, Record, complete, joined

from dtr.chaos.checker_record import replay_record
from dtr.chaos.checker_record_parts import check_parts, storage_verifier
from dtr.storage import StoredObject, open_storage


def part_of(worker: str, stored: StoredObject) -> dict[str, object]:
    return {
        "worker_id": worker,
        "generation": 1,
        "uri": stored.uri,
        "size_bytes": stored.size_bytes,
        "algorithm": stored.checksum.algorithm,
        "hex_digest": stored.checksum.hex_digest,
        "manifest_uri": None,
    }


def test_parts_on_s3_verify_and_an_overwritten_one_is_named(s3_server: str) -> None:
    bucket = f"dtr-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=bucket)
    uri, options = f"s3://{bucket}/run", {"endpoint_url": s3_server}
    storage = open_storage(uri, **options)
    try:
        stored = {w: storage.write(f"step-10/{w}.dtr", [w.encode() * 4096]) for w in ("a", "b")}
    finally:
        storage.close()
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    puts = [(KEYS.checkpoint_commit(10, w), part_of(w, s)) for w, s in stored.items()]
    record.leader_txn(term, *puts, (KEYS.checkpoint_complete(10), complete(10, 1, 2)))
    facts = replay_record(record.events, KEYS).facts

    with storage_verifier(uri, options) as verify:
        assert check_parts(facts, verify).ok
    client.put_object(Bucket=bucket, Key="run/step-10/b.dtr", Body=b"a later save of b")
    with storage_verifier(uri, options) as verify:
        result = check_parts(facts, verify)
    client.close()
    assert result.checked == 2
    assert len(result.violations) == 1
    assert result.violations[0].message.startswith("step 10: b's part does not verify: ")
