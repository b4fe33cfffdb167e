"""Originals kept on disk under the data directory, one file per document id."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# A file name of its own under the store and nothing else: no separator, no dot (so no `..`), no control character.
# Matched with fullmatch: `$` would accept a trailing newline.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, document_id: str) -> Path:
        if not _SAFE_ID.fullmatch(document_id):
            raise ValueError(f"invalid document id: {document_id!r}")
        return self._root / document_id[:2] / document_id

    def put(self, document_id: str, data: bytes) -> None:
        target = self.path(document_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash never leaves a truncated original behind a registry row.
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

    def delete(self, document_id: str) -> None:
        self.path(document_id).unlink(missing_ok=True)
