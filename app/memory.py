"""Keep the server's memory from growing with each visitor: one photo in work at a time, freed
memory handed back to the system, and the sessions of closed tabs shut down.

A 512 MB dyno serves every visitor from one process; Streamlit runs each browser session's
script in a thread of its own. bench/load.py (docs/BENCHMARKS.md, load section) sends 16 tabs at
once, each uploading phone-sized photos; before these measures the server peaked at 711 MB and
kept 548 MB after the tabs had closed. What grew with the visitors, and what this module does:

- Every session worked on its photo at once. A 12-megapixel photo decoded for the second look is
  2016 x 1512 pixels, 12 MB as Pillow stores it, plus what is made from it; sixteen at once is
  most of the dyno. `PhotoSlots` lets one photo in at a time and queues the others. The cores
  are not idle meanwhile: LiteRT runs a photo's passes on both, and the other sessions' scripts,
  uploads and page updates run beside it.
- glibc's malloc kept what Python freed. Each thread gets an arena of its own (up to 8 per core),
  which keeps its free pages; and once a big buffer is freed, malloc raises the size from which
  it maps big buffers on their own (and unmaps them when freed) to that buffer's size, so the
  next photos' buffers land in the arenas too. `tune_allocator` fixes that threshold, and
  `PhotoSlots` hands the arenas' free pages back (`malloc_trim`) after each photo.
- Closed tabs kept their sessions, uploads included: `ClosedTabs`.

Capping the number of arenas (MALLOC_ARENA_MAX=2) did not lower the peak once the arenas are
trimmed (bench/load.py, 298 MB against about 300), and from the app it would come too late:
Streamlit's threads have made their arenas before the first script runs. The allocator calls
go through glibc's `mallopt` and `malloc_trim` (the Heroku stack and Debian use glibc); elsewhere
they do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections.abc import Iterator

from streamlit.runtime import Runtime

_LOGGER = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # a mallopt parameter, from glibc's <malloc.h>
# Buffers from this size up (a photo's bytes, decoded pixels, thumbnails) are mapped on their own
# and unmapped when freed: glibc's own starting value, kept from rising. Python's small objects
# never reach malloc (pymalloc), so this is about bytes objects, numpy arrays and Pillow images.
MMAP_THRESHOLD = 128 * 1024
PHOTO_SLOTS = 1  # photos in work at once, process-wide (see the module doc)
RESUME_S = 15  # how long a closed tab's session can be resumed (a connection that drops and comes back)
CHECK_S = 2  # how often `ClosedTabs` looks for sessions to shut down


def _libc() -> ctypes.CDLL | None:
    """glibc, when the process runs on it (it has mallopt and malloc_trim); else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


_LIBC = _libc()


def tune_allocator() -> bool:
    """Fix malloc's mmap threshold (see the module doc); whether it could."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Hand the free pages of every malloc arena back to the system (well under a millisecond)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PhotoSlots:
    """At most `size` photos in work at once, process-wide; the others wait their turn.

    When a photo is done, the memory its work freed goes back to the system (`trim`), so that the
    arenas do not keep the last photo's pages.
    """

    def __init__(self, size: int = PHOTO_SLOTS) -> None:
        self._slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block. Do the work in a function called in the block, so that what
        its locals hold is freed when it returns, before the trim."""
        with self._slots:
            try:
                yield
            finally:
                trim()


class ClosedTabs:
    """Shut down the session of a tab that closed (or lost its connection) RESUME_S seconds ago.

    When a tab's websocket closes, Streamlit keeps its session, uploaded photos included, so that a
    connection that drops and comes back can resume it (`server.disconnectedSessionTTL`, 2 minutes).
    It forgets a session once that time is up, but only on its next session write, when the next
    visitor leaves: after a busy spell every photo stays until someone comes again (16 visitors'
    phone photos: some 30 MB the dyno keeps for nobody). So every tab that ran the app is watched
    (`visited`, from the script), and one that has not been connected for RESUME_S seconds is closed
    through the runtime's own call for a session that must not be resumed
    (`Runtime.clear_user_info_for_session`, what `st.logout` uses), which frees its files at once;
    what the session itself held goes back to the system at the next check (`gc.collect`, `trim`).
    A visitor whose connection comes back later gets a fresh page.
    """

    def __init__(self, resume_s: float = RESUME_S, check_s: float = CHECK_S) -> None:
        self._resume_s = resume_s
        self._check_s = check_s
        self._lock = threading.Lock()
        self._left: dict[str, float | None] = {}  # session id -> since when it has been disconnected
        self._closed = 0  # sessions closed since the last collection
        threading.Thread(target=self._watch, name="closed-tabs", daemon=True).start()

    def visited(self, session_id: str) -> None:
        """A script run of this session: watch it (again)."""
        with self._lock:
            self._left[session_id] = None

    def _watch(self) -> None:
        while True:
            time.sleep(self._check_s)
            try:
                self.check(time.monotonic())
            except Exception:  # noqa: BLE001 (the watch must outlive a surprise; the app works without it)
                _LOGGER.exception("closing the sessions of closed tabs failed")

    def check(self, now: float) -> int:
        """Close the sessions disconnected for RESUME_S seconds; how many it closed."""
        if not Runtime.exists():  # a test run of the script, without a server
            return 0
        runtime = Runtime.instance()
        if self._closed:  # their closing ran on the event loop since the last check: free what they held
            gc.collect()
            trim()
            self._closed = 0
        closing = []
        with self._lock:
            for session_id, since in list(self._left.items()):
                if runtime.is_active_session(session_id):
                    self._left[session_id] = None
                elif since is None:
                    self._left[session_id] = now
                elif now - since >= self._resume_s:
                    closing.append(session_id)
                    del self._left[session_id]
        for session_id in closing:
            runtime.clear_user_info_for_session(session_id)
        self._closed += len(closing)
        return len(closing)
