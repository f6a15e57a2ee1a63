"""Read a tar's member headers to the end of the file, and say where and why a damaged one stops.

Why: Python's ``tarfile`` ends its iteration without a word at a missing end-of-archive marker, at a
member header cut off half-way and at a damaged header, and raises ``ReadError`` for a member whose
data runs past the end of the file. A shard copied half-way or a download cut short therefore lost
its tail silently (a cut between members), or made the whole pool refused (a cut inside a member).
``TarScan`` yields every member that lies wholly inside the file and then records how the archive
ended: properly (a zero block where the next header would be), or truncated at a byte offset with
the reason. The caller decides what a truncation means for its samples (``data.wds``).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator

BLOCK = 512  # tar's header and padding unit


class TarScan:
    """Members of one tar file, for a single forward pass: ``for member in TarScan(path).members()``.

    After the pass: ``truncated_at`` is -1 when the archive ended properly, else the byte where its
    readable part ends (the header of the first member that could not be read whole, or the end of
    the file); ``detail`` says what was found there; ``cut_member`` names a member whose data the
    end of the file cuts off (None when the cut fell between members). Opening a file whose first
    header cannot be read raises ``tarfile.ReadError`` (it is no tar at all)."""

    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        self.truncated_at = -1
        self.detail = ""
        self.cut_member: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether the archive ended before its end-of-archive marker (known after the pass)."""
        return self.truncated_at >= 0

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Every member (files, links, folders) wholly inside the file, in archive order."""
        with tarfile.open(self.path, mode="r:") as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError as exc:
                    self._unreadable_header(tar.offset, exc)
                    return
                if member is None:
                    self._check_end(tar.offset)
                    return
                data_end = member.offset_data + (member.size if member.isreg() else 0)
                if data_end > self.size:
                    present = max(self.size - member.offset_data, 0)
                    self._stop(
                        member.offset, f"member {member.name} is cut off, {present} of {member.size} data bytes present"
                    )
                    self.cut_member = member.name
                    return
                yield member

    def _stop(self, offset: int, detail: str) -> None:
        self.truncated_at, self.detail = min(int(offset), self.size), detail

    def _unreadable_header(self, offset: int, exc: Exception) -> None:
        if offset > self.size:  # the last member's data is whole, its padding is not
            self._stop(
                self.size,
                "the file ends inside the padding after a complete member, before the end-of-archive "
                "marker, so any members that followed are missing",
            )
        else:
            self._stop(offset, f"the member header there cannot be read ({exc}), so nothing after it can be found")

    def _check_end(self, offset: int) -> None:
        """``tarfile`` stopped at ``offset``: fine when a zero block is there, a truncation otherwise."""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            block = handle.read(BLOCK)
        if len(block) == BLOCK and not any(block):
            return
        if not block:
            self._stop(
                offset,
                "the file ends after a complete member without tar's end-of-archive marker, so the "
                "members that followed are missing",
            )
        elif len(block) < BLOCK:
            self._stop(offset, f"a member header there is cut off, {len(block)} of {BLOCK} bytes present")
        else:
            self._stop(
                offset, "the member header there is damaged (not a tar header), so nothing after it can be found"
            )
