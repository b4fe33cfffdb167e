"""`kb ingest` on a bare data directory: progress, a summary naming each failure, and the exit code."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"


def kb(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_ingest_reports_each_failure_and_exits_non_zero(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(CORPUS / "txt" / "norwich-city.txt", inbox)
    shutil.copy(CORPUS / "pdf" / "password.pdf", inbox)
    (inbox / ".hidden.txt").write_text("never ingested")
    result = kb("ingest", str(inbox), "--group", "staff", data_dir=tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert "password.pdf" in result.stderr and "password protected" in result.stderr
    assert "1 ready, 1 failed" in result.stderr

    listing = kb("documents", "--json", data_dir=tmp_path / "data")
    assert listing.returncode == 0, listing.stderr
    documents = {d["filename"]: d for d in json.loads(listing.stdout)["documents"]}
    assert set(documents) == {"norwich-city.txt", "password.pdf"}
    assert documents["norwich-city.txt"]["status"] == "ready" and documents["norwich-city.txt"]["groups"] == ["staff"]
    assert documents["password.pdf"]["status"] == "failed"

    again = kb("ingest", str(inbox / "norwich-city.txt"), data_dir=tmp_path / "data")
    assert again.returncode == 0, again.stderr  # identical bytes: the existing, ready document

    search = kb("search", "Norwich City football club", "--json", data_dir=tmp_path / "data")
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["passages"][0]["filename"] == "norwich-city.txt"


def test_ingest_of_nothing_is_an_error(tmp_path: Path) -> None:
    result = kb("ingest", str(tmp_path / "missing"), data_dir=tmp_path / "data")
    assert result.returncode != 0
    assert "no such file" in result.stderr
