"""Deleting a worker's own parts of steps no longer retained, off the commit path.

Why a module of its own: the checkpoint manager used to list every object of
the job (``storage.list("step-")``) and delete its old ones on the commit
flusher's thread after every acknowledged commit. Every worker of a job writes
into the same bucket, so each listing grew with the whole fleet (N workers times
the steps kept, and every object no one deleted), and the next commit waited
for it: in the chaos soak (S3, 200 simulated workers writing into the same
bucket) a training worker's commits came back 13 s, then 30 s apart, and its
queue never drained. Now:

- the objects this process writes are remembered by name (``wrote``), so the
  steady state deletes without listing anything;
- leftovers of earlier processes of this worker (a crash between a save and
  its deletion) are found by one listing per manager, the first time there is
  something to collect; a listing that fails is tried again the next time;
- the work runs on its own thread (``dtr-checkpoint-gc``), and requests made
  while it runs coalesce into one more pass, so a slow or failing store never
  holds back a commit.

An object is deleted only when its step is below the oldest retained complete
step and no pending commit names it (as before). Failed deletions are logged
and retried on the next pass: garbage is harmless, a lost part is not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dtr.errors import DtrError
from dtr.storage import Storage

_log = logging.getLogger(__name__)


class OwnPartCollector:
    """Deletes this worker's objects of steps before the oldest kept one; see the module."""

    def __init__(
        self,
        storage: Storage,
        *,
        is_own: Callable[[str], bool],
        step_of: Callable[[str], int | None],
        referenced: Callable[[], set[str]],
    ) -> None:
        self._storage = storage
        self._is_own = is_own
        self._step_of = step_of
        self._referenced = referenced
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}  # own object name -> its step
        self._swept = False  # leftovers of earlier processes listed once
        self._oldest_kept: int | None = None
        self._scheduled = False
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dtr-checkpoint-gc")

    def wrote(self, name: str) -> None:
        """This process wrote ``name`` (a part or a manifest): collect it when its step goes."""
        step = self._step_of(name)
        if step is not None:
            with self._lock:
                self._known[name] = step

    def collect_before(self, oldest_kept: int) -> None:
        """Ask for a pass deleting own objects of steps before ``oldest_kept``; returns at once."""
        with self._lock:
            if self._closed:
                return
            self._oldest_kept = max(oldest_kept, self._oldest_kept or oldest_kept)
            if self._scheduled:
                return  # the pass that is queued will see the newer bound
            self._scheduled = True
        self._executor.submit(self._logged_pass)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no pass is queued or running; False when ``timeout_s`` ran out (tests)."""
        done = threading.Event()
        try:
            self._executor.submit(done.set)
        except RuntimeError:  # shut down: nothing runs any more
            return True
        return done.wait(timeout_s)

    def close(self) -> None:
        """Stop: a queued pass is dropped and a running one finishes on its own."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the pass ---------------------------------------------------------------------
    def _logged_pass(self) -> None:
        """A pass whose unexpected error is logged (an executor would keep it silently)."""
        try:
            self._pass()
        except Exception:
            if self._closed:  # the manager closed its queue under a running pass: expected
                _log.debug("checkpoint clean-up pass ended by close()", exc_info=True)
            else:
                _log.exception("checkpoint clean-up pass failed; the next commit tries again")

    def _pass(self) -> None:
        with self._lock:
            self._scheduled = False
            oldest = self._oldest_kept
        if oldest is None:
            return
        self._sweep_once()
        with self._lock:
            doomed = sorted((s, n) for n, s in self._known.items() if s < oldest)
            if not doomed or self._closed:
                return
        referenced = self._referenced()
        for step, name in doomed:
            if self._storage.uri_of(name) in referenced:
                continue  # a pending commit names it: it may yet be what a step references
            try:
                self._storage.delete(name)
            except DtrError as err:  # harmless: tried again on the next pass
                _log.warning("could not delete %s of step %d: %s", name, step, err)
                continue
            with self._lock:
                self._known.pop(name, None)

    def _sweep_once(self) -> None:
        """Learn own objects left by earlier processes of this worker (one listing)."""
        if self._swept:
            return
        try:
            names = self._storage.list("step-")
        except DtrError as err:
            _log.warning("could not list old checkpoint parts (trying again later): %s", err)
            return
        with self._lock:
            for name in names:
                step = self._step_of(name)
                if step is not None and self._is_own(name):
                    self._known.setdefault(name, step)
        self._swept = True
