"""How long the chaos harness takes to read and replay a long etcd record.

Run as ``.venv/bin/python benchmarks/record_read.py [--revisions N]``. It
starts its own single-member etcd (the harness's settings: no
auto-compaction), writes ``N`` leader-like transactions under one job prefix
(a part record and the writer stamp each: two events per revision, like a
commit) while a ``RecordReader`` follows them live as a run does, then times
how long the reader takes to hand over the whole record after the last
write, ``--catch-up`` a ``read_record`` started only after the writes (one
watch from revision 1, which etcd catches up quadratically), and
``replay_record`` (the record checkers), and prints the figures and the
peak resident memory. A 30-minute soak with hundreds of workers writes millions
of revisions; this says what the end-of-run audit costs per revision.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor

from dtr.chaos.checker_record import replay_record
from dtr.chaos.etcd_record import RecordReader, read_record
from dtr.etcd import EtcdCluster
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.store_types import Put

WRITERS = 8


def write_record(endpoints: list[str], keys: JobKeys, revisions: int) -> int:
    """``revisions`` commits of 40 workers' parts, each stamped by one leader term."""
    with EtcdStore(endpoints, timeout_s=10.0) as store:
        candidate = json.dumps({"replica_id": "r0", "address": "127.0.0.1:1"}).encode()
        term = store.put(keys.candidate(1), candidate)
        stamp = json.dumps({"replica": "r0", "term": term}).encode()

        def commit(i: int) -> None:
            step, worker = divmod(i, 40)
            part = {"worker_id": f"w{worker}", "generation": 1, "uri": f"file:///c/{i}.dtr"}
            part |= {"size_bytes": 4096, "algorithm": "crc32c", "hex_digest": "0" * 8}
            puts = [Put(keys.checkpoint_commit(step, f"w{worker}"), json.dumps(part).encode())]
            store.txn([], [*puts, Put(keys.writer, stamp)])

        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(commit, range(revisions), chunksize=256))
        return store.revision()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revisions", type=int, default=200_000)
    parser.add_argument(
        "--catch-up", action="store_true", help="also time a read started after the writes"
    )
    args = parser.parse_args()
    keys = JobKeys("record-bench")
    etcd = EtcdCluster.start(1)
    try:
        reader = RecordReader(etcd.endpoints, keys).start()  # as a run does: from the start
        began = time.monotonic()
        last = write_record(etcd.endpoints, keys, args.revisions)
        wrote = time.monotonic() - began
        began = time.monotonic()
        events = reader.finish()
        live = time.monotonic() - began
        print(
            f"etcd {etcd.version}: {args.revisions} transactions written in {wrote:.1f} s "
            f"(last revision {last}) while followed live"
        )
        print(f"live: all {len(events)} events in hand {live:.1f} s after the last write")
        if args.catch_up:
            began = time.monotonic()
            caught_up = read_record(etcd.endpoints, keys)
            took = time.monotonic() - began
            print(
                f"catch-up read_record: {len(caught_up)} events in {took:.1f} s "
                f"({len(caught_up) / took:,.0f} events/s)"
            )
            del caught_up
        began = time.monotonic()
        results = replay_record(events, keys).results
        replayed = time.monotonic() - began
    finally:
        etcd.stop()
    print(
        f"replay_record: {replayed:.1f} s; verdicts "
        + ", ".join(f"{r.name} {'ok' if r.ok else 'FAILED'} ({r.checked})" for r in results)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
