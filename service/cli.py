"""The `kb` command: a front door like the HTTP routes, on the same data directory."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from kb.ports import SearchMode

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kb: answers from your documents, with citations.")
# Piped or redirected, rich would cut tables to 80 columns (file names, key columns): give them room instead.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 400)
out = Console(width=None if sys.stdout.isatty() else 400)

_SKIP_NAMES = {".DS_Store", "Thumbs.db"}


def _settings():  # noqa: ANN202 - heavy imports stay out of the entry module's top level (vLLM spawns)
    from kb.settings import Settings

    return Settings()


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.name not in _SKIP_NAMES
            )
        elif path.is_file():
            found.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or directory")
    return found


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
) -> None:
    """Run the API, the web page and the ingest worker on the data directory."""
    # vLLM's loggers then go through kb's own handler: one format (JSON lines by default), one stream, one level.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    import uvicorn

    from service.app import create_app
    from service.datadir import DataDirLock
    from service.observability import configure_logging

    settings = _settings()
    lock = DataDirLock(settings.resolved_data_dir)
    if not lock.try_acquire():
        console.print(f"[red]error:[/] {lock.busy_message()}")
        raise typer.Exit(2)
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        lock.publish_server(url)
        _announce(settings, url)
        configure_logging(settings.logging)
        # uvicorn's own logging config and access log would bypass the JSON lines (ours carry the request id).
        # Keep-alive longer than the idle timeout of the proxies and load balancers in front (often 60 s): a proxy
        # that reuses a connection the server has just closed answers its client 502.
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                    timeout_keep_alive=75)  # fmt: skip
    finally:
        lock.release()


def _announce(settings: Any, url: str) -> None:
    """Where to open the web page. The local admin key goes into the link only on an interactive terminal: a
    service's output ends up in log files, and keys must not."""
    if not settings.auth.enabled:
        console.print(f"Web page: {url}/  (authentication is off)")
        return
    key = _keys(settings).ensure_bootstrap_key(settings.admin_key_path) if settings.auth.bootstrap_admin_key else None
    if key and sys.stderr.isatty():
        console.print(f"Web page: {url}/#key={key}", soft_wrap=True)
    elif key:
        console.print(f"Web page: {url}/  (the admin key is in {settings.admin_key_path})")
    else:
        console.print(f"Web page: {url}/  (create a key with `kb keys create`)")


def _keys(settings: Any):  # noqa: ANN202
    from kb.container import build_registry
    from service.auth import ApiKeyService

    return ApiKeyService(build_registry(settings), settings.auth)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
    group: Annotated[list[str], typer.Option("--group", "-g", help="Access group (repeatable)")] = [],  # noqa: B006
) -> None:
    """Ingest files and folders; exits non-zero if any file failed, naming each failure."""
    from service.cli_backends import open_backend

    files = _files(paths)
    if not files:
        console.print("[red]error:[/] no files found")
        raise typer.Exit(2)
    backend = open_backend(_settings(), with_generator=False)
    results: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[Path, str]] = []
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console,
        ) as progress:
            task = progress.add_task("ingesting", total=len(files))
            submitted: dict[str, Path] = {}
            for path in files:
                try:
                    document = backend.submit(path, group)
                except Exception as exc:  # a rejected upload is reported, the rest go on
                    rejected.append((path, str(exc)))
                    progress.advance(task)
                    continue
                submitted[document["document_id"]] = path
                if document["status"] in ("ready", "failed"):
                    results[document["document_id"]] = document
                    progress.advance(task)

            def on_update(document: dict[str, Any]) -> None:
                if document["status"] in ("ready", "failed") and document["document_id"] not in results:
                    results[document["document_id"]] = document
                    progress.advance(task)
                    progress.update(task, description=f"ingested {document['filename']}")

            for document in backend.wait(list(submitted), on_update):
                on_update(document)
    finally:
        backend.close()

    table = Table(title="kb ingest")
    for column in ("file", "status", "pages", "chunks", "error"):
        table.add_column(column)
    failures = len(rejected)
    for document_id, path in submitted.items():
        document = results.get(document_id, {})
        status = document.get("status", "?")
        failures += status != "ready"
        style = "green" if status == "ready" else "red"
        table.add_row(str(path), f"[{style}]{status}[/]", str(document.get("pages") or ""),
                      str(document.get("chunks") or ""), document.get("error") or "")
    for path, error in rejected:
        table.add_row(str(path), "[red]rejected[/]", "", "", error)
    console.print(table)
    console.print(f"{len(files) - failures} ready, {failures} failed")
    if failures:
        raise typer.Exit(1)


@app.command()
def search(
    query: str,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Retrieve the passages that best match a query."""
    from service.cli_backends import open_backend

    backend = open_backend(_settings(), with_generator=False)
    try:
        result = backend.search(query, top_k)
    finally:
        backend.close()
    if as_json:
        print(json.dumps({"passages": result["passages"]}, ensure_ascii=False))
        return
    for i, passage in enumerate(result["passages"], 1):
        where = passage["filename"] + (f" p.{passage['page']}" if passage.get("page") else "")
        out.print(f"[bold]{i}. {where}[/]  score={passage['score']:.3f}")
        out.print(passage["text"][:400], markup=False)
        out.print()


@app.command()
def ask(
    question: str,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Answer a question from the documents, with citations."""
    from service.cli_backends import open_backend

    # One question: the engine's start-up chatter is for operators of a server (`kb serve` keeps it), not here.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    backend = open_backend(_settings(), with_generator=True)
    try:
        answer = backend.ask(question)
    finally:
        backend.close()
    if as_json:
        print(json.dumps(answer, ensure_ascii=False))
        return
    out.print(answer["answer"], markup=False)
    if answer.get("mode") == "extract":
        out.print("(quoted from the sources)", style="dim")
    for sentence in answer.get("unsupported") or []:
        out.print(f"not supported by the cited sources: {sentence}", markup=False, style="yellow")
    if answer["citations"]:
        out.print()
        for c in answer["citations"]:
            where = c["filename"] + (f", page {c['page']}" if c.get("page") else "")
            out.print(f"[{c['n']}] {where}: {c['snippet'][:200]}", markup=False)


@app.command()
def documents(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """List documents with their status, error, pages and chunks."""
    from service.cli_backends import open_backend

    backend = open_backend(_settings(), with_generator=False)
    try:
        docs = backend.documents()
    finally:
        backend.close()
    if as_json:
        print(json.dumps({"documents": docs}, ensure_ascii=False))
        return
    table = Table()
    for column in ("document_id", "filename", "status", "pages", "chunks", "error"):
        table.add_column(column)
    for d in docs:
        table.add_row(d["document_id"], d["filename"], d["status"], str(d.get("pages") or ""),
                      str(d.get("chunks") or ""), d.get("error") or "")
    out.print(table)


@app.command()
def prepare() -> None:
    """Prepare the default models (convert SmolLM2 once) so that the first start is fast."""
    from kb.container import embedder_model_path, generator_model_path

    settings = _settings()
    print(f"embedder: {embedder_model_path(settings)}", file=sys.stderr)
    print(f"generator: {generator_model_path(settings)}", file=sys.stderr)


keys_app = typer.Typer(no_args_is_help=True, help="API keys: each has scopes and the document groups it may see.")
app.add_typer(keys_app, name="keys")


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `8w` (a bare number: seconds) as a timedelta; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"] if match else 0
    if not 0 < seconds <= 100 * 365 * 86400:
        raise ValueError(f"--expires-in {text!r}: give a duration such as 90s, 30m, 12h, 30d or 8w (at most 100 years)")
    return timedelta(seconds=seconds)


@keys_app.command("create")
def keys_create(
    scopes: Annotated[list[str], typer.Option("--scopes", help="search, ask, ingest, admin, metrics (comma-separated or repeated)")],
    groups: Annotated[list[str] | None, typer.Option("--groups", help="Document groups it may see ('*': all; default: the configured default groups)")] = None,
    name: Annotated[str, typer.Option(help="What the key is for")] = "",
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="Refuse the key after this long: 90s, 30m, 12h, 30d, 8w (default: never)")] = None,
) -> None:
    """Create a key. It is printed once, alone on the last line; only its SHA-256 digest is stored."""
    settings = _settings()
    try:
        expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
        key, secret = _keys(settings).create(name or "cli", _split(scopes), _split(groups or []) or None,
                                             expires_at=expires_at)  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    expiry = f"; expires {key.expires_at.isoformat(timespec='seconds')}" if key.expires_at else ""
    console.print(f"created key {key.key_id} ({key.name}): scopes {', '.join(key.scopes)}; groups {', '.join(key.groups)}{expiry}")
    console.print("store it now: it cannot be shown again")
    print(secret)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """All keys, revoked ones included (never the keys themselves)."""
    keys = [k.to_dict() for k in _keys(_settings()).list()]
    if as_json:
        print(json.dumps({"keys": keys}, ensure_ascii=False))
        return
    table = Table()
    for column in ("key_id", "name", "prefix", "scopes", "groups", "created_at", "last_used_at", "revoked_at",
                   "expires_at"):  # fmt: skip
        table.add_column(column)
    for k in keys:
        table.add_row(k["key_id"], k["name"], k["prefix"] + "…", ",".join(k["scopes"]), ",".join(k["groups"]),
                      (k["created_at"] or "")[:19], (k["last_used_at"] or "")[:19], (k["revoked_at"] or "")[:19],
                      (k["expires_at"] or "")[:19])  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key_id shown by `kb keys list`")]) -> None:
    """Revoke a key; running servers refuse it within seconds."""
    if not _keys(_settings()).revoke(key_id):
        console.print(f"[red]error:[/] no key {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval quality on QA sets.")
app.add_typer(eval_app, name="eval")


class EvalMode(str, Enum):
    dense = "dense"
    sparse = "sparse"
    hybrid = "hybrid"


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, typer.Option(help="SQuAD or TAT-QA json file, or BEIR directory")],
    mode: Annotated[EvalMode | None, typer.Option(help="Search mode (default: settings.retrieval.mode)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Questions to ask, spread evenly over the set")] = None,
    max_documents: Annotated[
        int | None, typer.Option(min=1, help="Sets of whole documents (COVID-QA): index only the first N")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Unit embedding cache (default: beside the models dir)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Recall@1/5/10, MRR@10, nDCG@10 and search latency of retrieval on a QA set, in a scratch index."""
    from evaluation.datasets import detect_format
    from evaluation.run import RetrievalEvaluation

    if not dataset.exists():
        raise typer.BadParameter(f"{dataset}: no such file or directory", param_hint="--dataset")
    try:
        detect_format(dataset)  # before loading the embedder
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    settings = _settings()
    evaluation = RetrievalEvaluation.open(settings, cache_dir)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        embedding = progress.add_task("embedding units and sentences", total=None)
        try:
            prepared = evaluation.prepare(
                dataset, max_documents, lambda done, total: progress.update(embedding, completed=done, total=total)
            )
        except ValueError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        search_mode = cast("SearchMode", mode.value) if mode else settings.retrieval.mode
        asking = progress.add_task("asking", total=None)
        [report] = evaluation.evaluate(
            prepared, [search_mode], limit,
            lambda done, total: progress.update(asking, completed=done, total=total),
        )
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return
    table = Table(title=f"kb eval retrieval: {report['name']} ({report['mode']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("questions", "units", "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10",
                "latency_ms_p50", "latency_ms_p95"):
        table.add_row(key, str(report[key]))
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
