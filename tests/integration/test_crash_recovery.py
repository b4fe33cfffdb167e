"""kill -9 in the middle of a batch loses nothing: after a restart unfinished jobs resume, no chunk is duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kb.adapters.edge_index import EdgeVectorIndex
from kb.models import SearchFilter
from tests.support import log_tail, start_kb_serve, stop_process_group

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
BATCH = [
    "pdf/interface-config-guide-p93.pdf",
    "pdf/a1977-backus-p21.pdf",
    "pdf/layout-parser-paper-fast.pdf",
    "pdf/multi-column-2p.pdf",
    "docx/handbook-1p.docx",
    "txt/norwich-city.txt",
    "html/example-10k-1p.html",
    "md/umlauts-utf8.md",
]


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_kb_serve({**os.environ, "KB_DATA_DIR": str(data_dir), "KB_GENERATOR__ENABLED": "false"}, log_path,
                          timeout=120)  # fmt: skip


def admin(data_dir: Path) -> dict[str, str]:
    """The local admin key the server wrote into its data directory."""
    return {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}


def statuses(url: str, data_dir: Path) -> dict[str, dict]:
    response = httpx.get(f"{url}/v1/documents", timeout=30, headers=admin(data_dir))
    assert response.status_code == 200, response.text
    return {d["document_id"]: d for d in response.json()["documents"]}


def test_kill_9_mid_batch_then_restart_resumes_without_duplicates(tmp_path: Path) -> None:
    data_dir, log_path = tmp_path / "data", tmp_path / "serve.log"
    process, url = start_server(data_dir, log_path)
    try:
        files = [("files", (Path(name).name, (CORPUS / name).read_bytes())) for name in BATCH]
        response = httpx.post(f"{url}/v1/documents", files=files, timeout=60, headers=admin(data_dir))
        assert response.status_code == 202, response.text
        ids = [d["document_id"] for d in response.json()["documents"]]
        deadline = time.monotonic() + 300
        while True:  # kill once part of the batch is done and the rest is not
            done = [d for d in statuses(url, data_dir).values() if d["status"] in ("ready", "failed")]
            if len(done) >= 2:
                break
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the server and its parser process, mid-batch
        process.wait(10)
        unfinished_at_kill = len(ids) - len(done)
        assert unfinished_at_kill > 0, "the batch finished before the kill: make it larger"
    finally:
        stop_process_group(process)

    process, url = start_server(data_dir, log_path)
    try:
        deadline = time.monotonic() + 600
        while True:
            documents = statuses(url, data_dir)
            if all(documents[i]["status"] in ("ready", "failed") for i in ids):
                break
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.5)
        assert [documents[i]["status"] for i in ids] == ["ready"] * len(ids), [documents[i] for i in ids]
    finally:
        stop_process_group(process)

    index = EdgeVectorIndex(data_dir.resolve() / "index", 384)
    try:
        for document_id in ids:
            assert index.count(SearchFilter(document_ids=[document_id])) == documents[document_id]["chunks"]
        assert index.count() == sum(documents[i]["chunks"] for i in ids)
    finally:
        index.close()
