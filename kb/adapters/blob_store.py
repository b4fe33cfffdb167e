"""Originals kept as files under one directory, one file per document id: the data directory on one machine, or a
shared volume (NFS, a ReadWriteMany claim) mounted at the same place by every process that reads or writes them."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A file name of its own under the store and nothing else: no separator, no dot (so no `..`), no control character.
# Matched with fullmatch: `$` would accept a trailing newline. The S3 adapter checks ids with the same pattern.
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def checked_id(document_id: str) -> str:
    if not isinstance(document_id, str) or not SAFE_ID.fullmatch(document_id):
        raise ValueError(f"invalid document id: {document_id!r}")
    return document_id


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, document_id: str) -> Path:
        """Where the id's file is (or would be). This adapter's own: a remote store has no such path."""
        document_id = checked_id(document_id)
        return self._root / document_id[:2] / document_id

    def put(self, document_id: str, data: bytes) -> None:
        target = self.path(document_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash never leaves a truncated original behind a registry row, and a reader never
        # opens half a file (rename is atomic on one file system, NFS included).
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, document_id: str) -> bytes:
        return self.path(document_id).read_bytes()

    @contextmanager
    def local_file(self, document_id: str) -> Iterator[Path]:
        # The store's own file, nothing copied. A later put replaces it by rename, so a reader that has it open keeps
        # the bytes it opened.
        path = self.path(document_id)
        if not path.is_file():
            raise FileNotFoundError(f"no original {document_id!r} in {self._root}")
        yield path

    def delete(self, document_id: str) -> None:
        self.path(document_id).unlink(missing_ok=True)

    def check(self) -> None:
        """The directory exists and this process can create, rename and remove files in it."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._root, prefix=".check-")
            try:
                os.close(fd)
                os.replace(tmp, tmp + "-renamed")
                tmp += "-renamed"
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise RuntimeError(f"blob store directory {self._root} is not writable: {exc}") from exc
