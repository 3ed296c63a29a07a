"""Two tensors' bytes read side by side, for diff: reused buffers, a window for small tensors, reads overlapped.

A byte range is (file, offset, nbytes), as `Source.byte_range` gives it. Comparing two ranges is memcmp
(equality of whole bytearrays; comparing memoryviews goes element by element, forty times slower). While one side
is read or compared on this thread, the other side, or the next pair of chunks, is read on a second one:
`readinto` releases the GIL, so the second core copies from the page cache meanwhile.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from io import BufferedReader
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

from modinspect.errors import CorruptFileError

if (
    TYPE_CHECKING
):  # imported when a second thread is first needed: identical small files never start one
    from concurrent.futures import Future, ThreadPoolExecutor

ByteRange = tuple[Path, int, int]
WINDOW = 1 << 20  # tensors up to this size are served from one read of this many bytes
PIECE = 4 << 20  # bytes per comparison of large tensors
_NONZERO = re.compile(rb"[^\x00]")


class ByteReader:
    """Byte ranges of files through one open handle per file; small ranges from a window of their neighbours.

    A checkpoint of 200k small tensors is 200k reads of a few bytes each; served from one 1 MiB read at a
    time they cost a slice each. Used by one thread at a time.
    """

    MAX_FILES = 64  # a 1,000-shard index must not run out of descriptors

    def __init__(self) -> None:
        self._files: dict[Path, BufferedReader] = {}
        self._window = bytearray(WINDOW)
        self._window_at: tuple[Path, int, int] | None = None  # file, offset, bytes held

    def _file(self, path: Path) -> BufferedReader:
        f = self._files.get(path)
        if f is None:
            if len(self._files) >= self.MAX_FILES:
                self._files.pop(next(iter(self._files))).close()
            f = self._files[path] = path.open("rb")
        return f

    def read_into(self, path: Path, offset: int, buf: memoryview) -> None:
        f = self._file(path)
        f.seek(offset)
        if f.readinto(buf) != len(buf):
            raise CorruptFileError(f"{path} is truncated: a tensor ends past the end of its data")

    def small(self, path: Path, offset: int, nbytes: int) -> bytearray:
        """The `nbytes` (at most WINDOW) at `offset`, from the window when it holds them."""
        at = self._window_at
        # `is` first: sources hand out one Path object per file, and Path.__eq__ is slow Python
        if (
            at is None
            or (at[0] is not path and at[0] != path)
            or not at[1] <= offset
            or offset + nbytes > at[1] + at[2]
        ):
            f = self._file(path)
            f.seek(offset)
            got = f.readinto(self._window)
            if got < nbytes:
                raise CorruptFileError(
                    f"{path} is truncated: a tensor ends past the end of its data"
                )
            at = self._window_at = (path, offset, got)
        start = offset - at[1]
        return self._window[start : start + nbytes]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _equal(a: bytearray, b: bytearray, k: int) -> bool:
    """Whether the first `k` bytes of two buffers of one size are equal: one memcmp, no copy.

    Comparing memoryviews goes element by element and slicing a bytearray copies it, so a short last
    piece is compared whole: b's bytes past `k` are copied over a's first (a memcpy within pages already
    mapped), and the buffers are then equal exactly where their first `k` bytes are.
    """
    if k < len(a):
        memoryview(a)[k:] = memoryview(b)[k:]
    return a == b


def _same_parts(a: bytearray, b: bytearray, sizes: list[int]) -> list[bool]:
    """For consecutive parts of these sizes of two equal-length buffers, whether each part is equal in both.

    Their XOR is zero exactly where they agree: a regex search (C) finds the next nonzero byte, which marks
    its part unequal, and goes on from the next part.
    """
    out = [True] * len(sizes)
    starts = list(accumulate(sizes, initial=0))  # starts[len(sizes)] is the end
    x = (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")
    search = _NONZERO.search
    found = search(x)
    while found is not None:
        part = (
            bisect_right(starts, found.start()) - 1
        )  # the last part to start there: empty parts hold no byte
        out[part] = False
        found = search(x, starts[part + 1])
    return out


class PairReader:
    """Side A and side B, each with its reader and its reused buffers, and one thread that reads ahead."""

    def __init__(self) -> None:
        self.a, self.b = ByteReader(), ByteReader()
        self._pool: ThreadPoolExecutor | None = None
        self._buffers: list[
            bytearray
        ] = []  # a0, b0, a1, b1: two pairs, so one fills while one is used
        self._pieces: tuple[bytearray, bytearray] | None = (
            None  # same()'s, apart: sizes never alternate
        )
        self._torch_threads: int | None = None

    def _submit(self, fn: object, *args: object) -> Future[None]:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modinspect-read")
        return self._pool.submit(fn, *args)  # type: ignore[arg-type]

    def _views(self, size_a: int, size_b: int) -> list[memoryview]:
        """Views of four buffers of at least these sizes; they only grow, so tensors of other sizes reuse them."""
        if not self._buffers:
            self._buffers = [bytearray(0) for _ in range(4)]
        for i, size in enumerate((size_a, size_b, size_a, size_b)):
            if len(self._buffers[i]) < size:
                self._buffers[i] = bytearray(size)
        return [memoryview(b) for b in self._buffers]

    def same(self, ra: ByteRange, rb: ByteRange) -> bool:
        """Whether two ranges hold the same bytes; stops at the first piece that differs."""
        (path_a, at_a, n), (path_b, at_b, n_b) = ra, rb
        if n != n_b:
            return False
        if n <= WINDOW:
            return self.a.small(path_a, at_a, n) == self.b.small(path_b, at_b, n)
        if self._pieces is None:
            self._pieces = bytearray(PIECE), bytearray(PIECE)
        pa, pb = self._pieces
        va, vb = memoryview(pa), memoryview(pb)
        for start in range(0, n, PIECE):
            k = min(PIECE, n - start)
            pending = self._submit(self.b.read_into, path_b, at_b + start, vb[:k])
            try:
                self.a.read_into(path_a, at_a + start, va[:k])
            finally:
                pending.result()
            if not _equal(pa, pb, k):
                return False
        return True

    def same_each(self, ranges_a: Sequence[ByteRange], ranges_b: Sequence[ByteRange]) -> list[bool]:
        """Whether ranges_a[i] and ranges_b[i] hold the same bytes, for ranges of at most WINDOW bytes each.

        Pairs that follow one another on both sides (one file each, each range where the last ended, of one
        size, a run of at most WINDOW bytes) are compared as one: a slice of each window, one memcmp. Only a
        run whose bytes differ is looked at tensor by tensor, where its bytes differ.
        """
        out = [False] * len(ranges_a)
        i, n = 0, len(ranges_a)
        while i < n:
            path_a, start_a, k = ranges_a[i]
            path_b, start_b, k_b = ranges_b[i]
            if k != k_b or k > WINDOW:
                out[i] = self.same(ranges_a[i], ranges_b[i])
                i += 1
                continue
            end_a, end_b, limit, j = start_a + k, start_b + k, start_a + WINDOW, i + 1
            while j < n:
                p_a, at_a, m = ranges_a[j]
                p_b, at_b, m_b = ranges_b[j]
                # `is`: sources hand out one Path object per file (Path.__eq__ is slow Python)
                if (
                    at_a != end_a
                    or at_b != end_b
                    or m != m_b
                    or end_a + m > limit
                    or p_a is not path_a
                    or p_b is not path_b
                ):
                    break
                end_a, end_b, j = end_a + m, end_b + m, j + 1
            if j - i == 1:
                out[i] = self.a.small(path_a, start_a, k) == self.b.small(path_b, start_b, k)
            else:
                total = end_a - start_a
                data_a, data_b = (
                    self.a.small(path_a, start_a, total),
                    self.b.small(path_b, start_b, total),
                )
                if data_a == data_b:
                    out[i:j] = [True] * (j - i)
                else:
                    out[i:j] = _same_parts(data_a, data_b, [r[2] for r in ranges_a[i:j]])
            i = j
        return out

    def differing_parts(self, ra: ByteRange, rb: ByteRange, part: int) -> int:
        """How many of the consecutive `part`-byte parts (a quantized tensor's rows) of two ranges of one length differ."""
        step = max(1, PIECE // part) * part
        differ = 0
        for va, vb in self.chunk_pairs(ra, rb, step, step):
            differ += _same_parts(va, vb, [part] * (len(va) // part)).count(False)  # type: ignore[arg-type]
        return differ

    def chunk_pairs(
        self, ra: ByteRange, rb: ByteRange, step_a: int, step_b: int
    ) -> Iterator[tuple[memoryview, memoryview]]:
        """Both ranges in aligned pieces of step_a and step_b bytes, the next pair read while this one is used.

        A yielded pair is valid until the next is asked for.
        """
        (path_a, at_a, n_a), (path_b, at_b, n_b) = ra, rb
        pieces = -(-n_a // step_a) if n_a else 0
        if pieces != (-(-n_b // step_b) if n_b else 0):
            raise ValueError("the two ranges do not hold the same number of pieces")
        views = self._views(step_a, step_b)

        def read(k: int) -> None:
            va, vb = views[2 * (k % 2)], views[2 * (k % 2) + 1]
            self.a.read_into(path_a, at_a + k * step_a, va[: min(step_a, n_a - k * step_a)])
            self.b.read_into(path_b, at_b + k * step_b, vb[: min(step_b, n_b - k * step_b)])

        if pieces == 1:  # nothing to read ahead: no thread round trip
            read(0)
            yield views[0][:n_a], views[1][:n_b]
            return
        pending = self._submit(read, 0) if pieces else None
        try:
            for k in range(pieces):
                assert pending is not None
                pending.result()
                pending = self._submit(read, k + 1) if k + 1 < pieces else None
                va, vb = views[2 * (k % 2)], views[2 * (k % 2) + 1]
                yield va[: min(step_a, n_a - k * step_a)], vb[: min(step_b, n_b - k * step_b)]
        finally:
            if pending is not None:  # never leave a read running into buffers or handles in use
                pending.result()

    def single_threaded_torch(self) -> None:
        """Run diff's arithmetic on one torch thread (the reader thread has the other core); close() restores.

        Each chunk is a dozen elementwise passes over a few MiB, each pass a barrier for torch's intra-op
        threads: on a busy 2-core machine one descheduled thread stalls them all (a GPT-2 diff measured
        10.0 s with two threads and 2.7 s with one while other work ran). One thread also makes the float
        sums (mean |a-b|, relative L2, cosine) independent of how many cores the machine has.
        """
        if self._torch_threads is None:
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def close(self) -> None:
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.a.close()
        self.b.close()
