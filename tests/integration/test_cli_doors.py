"""The `kb` command as a new user meets it, output piped or redirected and 60 columns wide: ingest through a running
server whose key has a small rate limit, a summary table that names every file in full without library noise, a
command sent to a server that is still starting, read commands on a fresh data directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, log_tail, stop_process_group

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
KB = Path(sys.executable).with_name("kb")
TABLE_EDGES = "│┃"


def kb_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KB_URL", "KB_API_KEY", "KB_DATA_DIR")}
    return {**env, "COLUMNS": "60", **extra}


def kb(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KB), *args], check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def first_column(table_output: str) -> str:
    """The `file` cells of a summary table, joined in order: a name folded over several lines reads whole again."""
    cells = [line.strip()[1:].split("│")[0].strip() for line in table_output.splitlines() if line.strip()[:1] == "│"]
    return "".join(cells)


def write_files(folder: Path, count: int, tag: str) -> list[str]:
    """`count` small distinct text files in nested folders; their names relative to `folder`."""
    names = []
    for i in range(count):
        relative = Path(f"team-{i % 3}") / f"{tag}-note-{i:02d}.txt"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(f"Note {tag} {i}: the {tag} meeting number {i} decided item {i * 7}.\n")
        names.append(str(relative))
    return names


def start_server(data_dir: Path, port: int, log_path: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "KB_GENERATOR__ENABLED": "false", **settings}
    with log_path.open("ab") as log:
        return subprocess.Popen([str(KB), "serve", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def create_key(data_dir: Path) -> str:
    created = kb("keys", "create", "--scopes", "search,ingest,admin", "--groups", "*", "--name", "cli test",
                 env=kb_env(KB_DATA_DIR=str(data_dir)))  # fmt: skip
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def test_ingest_through_a_rate_limited_server(tmp_path: Path) -> None:
    """40 requests a minute for the key. 24 files used to take 24 uploads and then 24 status requests every half
    second: 429 within the first second, a traceback, and the key refused everywhere for a minute. Now the status
    of all pending files is one listing per interval, kept within the limit; uploads refused with 429 wait as long as
    the server says and go on; the summary always ends the run."""
    server_dir, port = tmp_path / "server-data", free_port()
    url = f"http://127.0.0.1:{port}"
    key = create_key(server_dir)
    client_env = kb_env(KB_URL=url, KB_API_KEY=key, KB_DATA_DIR=str(tmp_path / "client-data"))

    # A command sent before the server runs says that it is waiting, then gets its answer.
    early = subprocess.Popen([str(KB), "documents", "--json"], env=client_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2)
    log_path = tmp_path / "serve.log"
    server = start_server(server_dir, port, log_path, KB_RATE_LIMIT__REQUESTS="40", KB_RATE_LIMIT__WINDOW="minute")
    try:
        stdout, stderr = early.communicate(timeout=300)
        assert early.returncode == 0, stderr + log_tail(log_path)
        assert json.loads(stdout) == {"documents": []}
        assert f"waiting for the server at {url} to start" in stderr
        assert f"no documents in the server at {url}" in stderr and "kb ingest PATH" in stderr

        inbox = tmp_path / "inbox"
        names = write_files(inbox, 24, "first")
        result = kb("ingest", str(inbox), env=client_env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert "24 ready, 0 failed" in result.stderr
        table = first_column(result.stderr)
        assert all(name in table for name in names), result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "client-data").exists()  # a remote server's client touches no data directory

        # The key still works everywhere right after: the status checks left room in its limit.
        listing = httpx.get(f"{url}/v1/documents", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert listing.status_code == 200, listing.text
        assert len(listing.json()["documents"]) == 24

        # The key's minute used up elsewhere (the web page, a script): the uploads wait as long as the server says and
        # go on; one bad file fails the run, and the summary names it.
        headers = {"Authorization": f"Bearer {key}"}
        assert any(httpx.get(f"{url}/v1/documents", headers=headers).status_code == 429 for _ in range(60))
        second = tmp_path / "second"
        names = write_files(second, 6, "second")
        (second / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf\n")
        result = kb("ingest", str(second), env=client_env)
        assert result.returncode == 1, result.stderr
        assert "rate limit for this key is reached: waiting" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "6 ready, 1 failed" in result.stderr
        table = first_column(result.stderr)
        assert all(name in table for name in [*names, "broken.pdf"]), result.stderr
        assert any(line.startswith("failed: broken.pdf") for line in result.stderr.splitlines()), result.stderr
    finally:
        if early.poll() is None:
            early.kill()
        stop_process_group(server)


def test_a_server_that_never_starts_is_reported(tmp_path: Path) -> None:
    env = kb_env(KB_URL=f"http://127.0.0.1:{free_port()}", KB_SERVER_START_TIMEOUT_S="3")
    started = time.monotonic()
    result = kb("search", "anything", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 3 and result.stdout == ""
    assert "waiting for the server at http://127.0.0.1:" in result.stderr
    assert "was not ready after" in result.stderr and "kb serve" in result.stderr
    assert time.monotonic() - started < 60


def test_summary_on_a_narrow_log_names_every_file_without_library_noise(tmp_path: Path) -> None:
    given = tmp_path / "uploads"
    deep = Path("2026") / "invoices-and-contracts" / "department-of-finance-quarterly-reporting"
    (given / deep).mkdir(parents=True)
    shutil.copy(CORPUS / "txt" / "norwich-city.txt", given / deep / "quarterly-report-for-the-finance-committee.txt")
    # The PDF libraries print "Cannot set non-stroke color …" lines while reading this one.
    shutil.copy(
        CORPUS / "pdf" / "invalid-pdf-structure-pdfminer-one-page.pdf",
        given / deep / "scan-with-a-broken-structure.pdf",
    )
    (given / deep / "truncated-copy-of-the-signed-contract.pdf").write_bytes(
        (SAMPLES / "kb-administrator-guide.pdf").read_bytes()[:3000]
    )
    names = [str(deep / n) for n in ("quarterly-report-for-the-finance-committee.txt",
                                     "scan-with-a-broken-structure.pdf",
                                     "truncated-copy-of-the-signed-contract.pdf")]  # fmt: skip
    data_dir = tmp_path / "data"

    result = kb("ingest", str(given), env=kb_env(KB_DATA_DIR=str(data_dir)))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert max(len(line) for line in lines if line[:1] in "┏┃│└") <= 60
    table = first_column(result.stderr)
    assert all(name in table for name in names), result.stderr
    assert str(given) not in table  # relative to the folder given, not absolute
    assert f"failed: {names[2]}: " in result.stderr
    assert "2 ready, 1 failed" in result.stderr
    # Nothing but the progress line, the table, the failures and the count: the libraries' lines are in the log.
    assert "non-stroke color" not in result.stderr
    unexpected = [line for line in lines if line.strip() and line.strip()[0] not in "┏┃┡│└"
                  and not line.startswith(("ingest", "failed: ", "2 ready")) and "kb ingest" not in line]  # fmt: skip
    assert unexpected == []
    assert "non-stroke color" in (data_dir / "logs" / "cli.log").read_text()


def test_read_commands_on_a_fresh_data_directory(tmp_path: Path) -> None:
    """The default data directory is ./data under wherever the command runs: the message names it in full."""
    env, data_dir = kb_env(), tmp_path / "data"
    listing = kb("documents", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert f"no documents in {data_dir} (a new, empty data directory)" in listing.stderr
    assert "kb ingest PATH" in listing.stderr and "KB_DATA_DIR" in listing.stderr

    listing = kb("documents", "--json", env=env, cwd=tmp_path)
    assert listing.returncode == 0 and json.loads(listing.stdout) == {"documents": []}
    assert f"no documents in {data_dir}" in listing.stderr

    search = kb("search", "upload limit", "--json", env=env, cwd=tmp_path)
    assert search.returncode == 0 and json.loads(search.stdout) == {"passages": []}
    assert f"no documents in {data_dir}" in search.stderr

    started = time.monotonic()
    ask = kb("ask", "What is the upload limit?", "--json", env=env, cwd=tmp_path)
    assert ask.returncode == 1
    assert json.loads(ask.stdout)["error"]["type"] == "no_documents"
    assert f"no documents in {data_dir}" in ask.stderr
    assert time.monotonic() - started < 60  # no engine started to say so


def test_ask_locally_prints_the_answer_not_the_engine_logs(tmp_path: Path) -> None:
    env = kb_env(KB_DATA_DIR=str(tmp_path / "data"))
    ingested = kb("ingest", str(SAMPLES), env=env)
    assert ingested.returncode == 0, ingested.stderr

    question = "What is the default upload size limit?"
    as_json = kb("ask", question, "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)  # the whole of stdout is one JSON document
    assert answer["answer"] and answer["citations"]
    assert "WARNING" not in as_json.stderr and "EngineCore" not in as_json.stderr

    # As `make run` shows it: the answer and its sources, stdout and stderr together.
    merged = subprocess.run([str(KB), "ask", question], check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)  # fmt: skip
    assert merged.returncode == 0, merged.stdout
    lines = [line for line in merged.stdout.splitlines() if line.strip()]
    assert 2 <= len(lines) <= 12, merged.stdout
    assert any(line.startswith("[") and "kb-administrator-guide.pdf" in line for line in lines), merged.stdout
    assert "EngineCore" in (tmp_path / "data" / "logs" / "cli.log").read_text()
