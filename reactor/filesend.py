"""conn.sendfile(): a file region queued in order with a connection's other output.

Rules:
- The arguments are checked at the call (TypeError / ValueError naming `file`, `offset` or
  `count`): a regular file, open, with at least offset + count bytes.  The descriptor is
  duplicated then (the caller may close its file at once; a reused fd number can never send
  another file's bytes) and the duplicate is closed when the region is sent or the connection
  ends.  The caller's file is never closed by pygev.
- Queueing: once a connection has a file region queued its output ring becomes a `SendQueue`:
  segments in order - bytes (RingBuffers) and file regions.  It speaks the ring's language to
  output.py (`write`, `_write_to`, `len`), so the flush appends later output behind the file
  and the writable event drains it; everything queued before the call (this turn's replies,
  the ring) goes before it.  `len()` counts the file bytes not sent yet: they are in
  `pending_write`.  `memory` is what is held in memory: backpressure (write_high_water) and
  write_limit count that, not the file's bytes (a file costs no memory while queued, and a
  TLS handshake must still be read while a file waits for it).
- Plain sockets: the kernel copies the file with sendfile(2) (`pg_sendfile`): no byte passes
  through Python.  TLS: the file is read in FILE_CHUNK pieces and encrypted as the socket
  drains.  TLS records must leave in the order they were encrypted, so while a file is
  queued the TLS session holds back plaintext sent after it (`TlsSession.hold`): it is
  encrypted when its turn in the queue comes; engine output (handshake records) joins the
  already-encrypted front; our close_notify waits until the queue is empty.
- A file that shrinks after the call (truncated while queued): what exists is sent, then the
  connection is aborted with OSError(ENODATA) and a WARNING (the peer would otherwise wait
  for bytes that never come, or take the next reply as file data).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import weakref
from collections import deque
from typing import Any

from ringbuf import RingBuffer

from ._native import lib

log = logging.getLogger("reactor.loop")

FILE_CHUNK = 256 << 10      # TLS: bytes of a file read and encrypted at a time
_RING_MIN = 65536


def check_file(file: Any, offset: Any, count: Any) -> tuple[int, int, int]:
    """Validate sendfile()'s arguments; returns (duplicated fd, offset, count)."""
    if isinstance(file, bool) or not (isinstance(file, int) or callable(getattr(file, "fileno", None))):
        raise TypeError(f"file must be a file object or a file descriptor, not {type(file).__name__}")
    if not isinstance(file, int):
        if getattr(file, "closed", False):
            raise ValueError("file is closed")
        try:
            fd = file.fileno()
        except (OSError, ValueError) as exc:
            raise TypeError(f"file has no file descriptor ({exc})") from None
    else:
        fd = file
        if fd < 0:
            raise ValueError(f"file descriptor must be >= 0, got {fd}")
    for name, value in (("offset", offset), ("count", count)):
        if value is None and name == "count":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int{' or None' if name == 'count' else ''}, "
                            f"not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ValueError(f"file descriptor {fd} is not open ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("file is a directory, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("file must be a regular file (sendfile sends regions of files)")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        raise ValueError("file is open for writing only; open it for reading")
    size = st.st_size
    if offset > size:
        raise ValueError(f"offset {offset} is past the end of the file ({size} bytes)")
    if count is None:
        count = size - offset
    elif offset + count > size:
        raise ValueError(f"count {count} from offset {offset} runs past the end of the file "
                         f"({size} bytes)")
    return os.dup(fd), offset, count


class FileRegion:
    """`count` bytes of a (duplicated) descriptor from `offset`; closes the duplicate."""

    __slots__ = ("fd", "offset", "left", "__weakref__")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.left = fd, offset, count

    def advance(self, n: int) -> None:
        self.offset += n
        self.left -= n
        if not self.left:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class SendQueue:
    """A connection's unsent output while file regions are queued (see the module rules)."""

    __slots__ = ("_segs", "_n", "_mem", "_tls", "_cipher", "stalled", "__weakref__")

    def __init__(self, head: RingBuffer | None, tls: Any) -> None:
        self._segs: deque[Any] = deque()   # RingBuffer | FileRegion | list (TLS plaintext)
        self._n = self._mem = 0
        self._tls = tls
        self._cipher: RingBuffer | None = None   # TLS: encrypted, not yet written
        self.stalled = False                     # TLS: waiting for the handshake
        if head is not None and len(head):
            if tls is not None:
                self._cipher = head
            else:
                self._segs.append(head)
            self._n = self._mem = len(head)

    def __len__(self) -> int:
        return self._n

    @property
    def memory(self) -> int:
        """Bytes held in memory (file bytes are not)."""
        return self._mem

    # -- adding -------------------------------------------------------------------------
    def write(self, data: Any) -> int:
        """Bytes for the socket as they are (plain output; TLS: records), behind what waits."""
        n = len(data)
        if not n:
            return 0
        if self._tls is not None:
            ring = self._cipher
            if ring is None:
                ring = self._cipher = RingBuffer(max(_RING_MIN, n))
        else:
            ring = self._segs[-1] if self._segs else None
            if type(ring) is not RingBuffer:
                ring = RingBuffer(max(_RING_MIN, n))
                self._segs.append(ring)
        ring.write(data)
        self._n += n
        self._mem += n
        return n

    def add_file(self, region: FileRegion) -> None:
        self._segs.append(region)
        self._n += region.left
        if self._tls is not None:
            self._tls.hold = weakref.ref(self)

    def hold(self, data: Any) -> None:
        """TLS: plaintext sent while a file waits; encrypted when its turn comes."""
        chunk = bytes(data)
        segs = self._segs
        if not segs or type(segs[-1]) is not list:
            segs.append([])
        segs[-1].append(chunk)
        self._n += len(chunk)
        self._mem += len(chunk)

    # -- draining -----------------------------------------------------------------------
    def _write_to(self, fd: int) -> int:
        """Write what the socket takes, in order; returns bytes written, else -errno."""
        total = 0
        res = 0
        segs = self._segs
        tls = self._tls
        while True:
            if tls is not None:
                ring = self._cipher
                if ring is not None and len(ring):
                    res = self._write_ring(ring, fd)
                    if res > 0:
                        total += res
                    if len(ring):
                        break
                if not segs:
                    self._release()
                    if self._cipher is None or not len(self._cipher):
                        break
                    continue
                res = self._encrypt_next()
                if res in (-errno.ENODATA, -errno.EPROTO):
                    return res
                if res < 0:
                    break
                continue
            if not segs:
                break
            seg = segs[0]
            if type(seg) is RingBuffer:
                res = self._write_ring(seg, fd)
                if res > 0:
                    total += res
                if len(seg):
                    break
                segs.popleft()
                continue
            res = lib.pg_sendfile(fd, seg.fd, seg.offset, seg.left)
            if res > 0:
                total += res
                self._n -= res
                seg.advance(res)
            elif res == -errno.ENODATA:
                self._shrunk(seg)
                return res
            if seg.left:
                if res >= 0:
                    res = -errno.EAGAIN
                break
            segs.popleft()
        return total if total > 0 else (res if res < 0 else -errno.EAGAIN if self._n else 0)

    def _write_ring(self, ring: RingBuffer, fd: int) -> int:
        """Write what the socket takes of a ring of queued bytes (the cipher ring, or bytes
        between files) and count it off; returns bytes written, else -errno."""
        res = ring._write_to(fd)
        if res > 0:
            self._n -= res
            self._mem -= res
        return res

    def _encrypt_next(self) -> int:
        """TLS: encrypt the next piece of the queue into the cipher ring; -errno to stop."""
        tls = self._tls
        if not tls.ready:
            self.stalled = True            # reading.py resumes it when the handshake is done
            return -errno.EAGAIN
        seg = self._segs[0]
        if type(seg) is list:
            self._segs.popleft()
            size = sum(map(len, seg))
            self._n -= size
            self._mem -= size
            try:
                for chunk in seg:
                    self.write(tls.encrypt_now(chunk))
            except Exception as exc:        # the TLS engine refused (it was shut down)
                log.warning("TLS: cannot encrypt queued output: %s", exc)
                return -errno.EPROTO
            return 0
        want = min(FILE_CHUNK, seg.left)
        try:
            chunk = os.pread(seg.fd, want, seg.offset)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        if not chunk:
            self._shrunk(seg)
            return -errno.ENODATA
        self._n -= len(chunk)
        seg.advance(len(chunk))
        if not seg.left:
            self._segs.popleft()
        try:
            self.write(tls.encrypt_now(chunk))
        except Exception as exc:
            log.warning("TLS: cannot encrypt a queued file: %s", exc)
            return -errno.EPROTO
        return 0

    def _release(self) -> None:
        """TLS: nothing is held back any more: encrypt directly again; a close_notify asked
        for meanwhile goes out now."""
        tls = self._tls
        if tls.hold is not None:
            tls.hold = None
            if tls.shutdown_due:
                tls.shutdown_due = False
                self.write(tls.shutdown())

    def _shrunk(self, seg: FileRegion) -> None:
        log.warning("a file queued by sendfile() ended %d bytes early (truncated while queued); "
                    "aborting the connection", seg.left)
        seg.close()


def queue_file(loop: Any, conn: Any, region: FileRegion) -> None:
    """Loop thread: put the region behind everything queued for `conn`, start writing."""
    out = loop.out
    out.seal_pending(conn)
    parts = conn._parts
    conn._parts = None
    q = conn._out
    if type(q) is not SendQueue:
        q = conn._out = SendQueue(q, conn._tls)
    if parts:
        out.spill(conn, parts)             # this turn's output goes before the file
    q.add_file(region)
    out.write_ring(conn)


def resume_after_handshake(loop: Any, conn: Any) -> None:
    """TLS: the handshake is done; what it queued (tickets) goes first, then the queue."""
    conn._out.stalled = False
    parts = conn._parts
    conn._parts = None
    if parts:
        loop.out.spill(conn, parts)
    loop.out.write_ring(conn)


def queue_posted(loop: Any, conn: Any, region: FileRegion) -> None:
    """sendfile() from another thread, on the loop (the region was counted in _posted)."""
    with loop._inbox_lock:
        conn._posted -= region.left
    if conn._state == 0 and not conn._shut:
        queue_file(loop, conn, region)
    else:
        region.close()


def sendfile(conn: Any, file: Any, offset: Any, count: Any) -> None:
    """Connection.sendfile: check the arguments here, queue on the connection's loop."""
    fd, offset, count = check_file(file, offset, count)
    region = FileRegion(fd, offset, count)
    if not count:
        region.close()
        return
    loop = conn._loop
    if loop.in_loop_thread():
        queue_file(loop, conn, region)
    else:
        with loop._inbox_lock:
            conn._posted += count
        loop.call_soon(queue_posted, loop, conn, region)


__all__ = ["FILE_CHUNK", "FileRegion", "SendQueue", "check_file", "queue_file", "resume_after_handshake",
           "sendfile"]
