"""The `kb` command: a front door like the HTTP routes, on the same data directory."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from kb.ports import SearchMode

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kb: answers from your documents, with citations.")
# Piped or redirected, rich would cut tables to 80 columns (file names, key columns): give them room instead, unless
# COLUMNS says how wide. Long cells fold onto further lines rather than being cut.
console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 400)
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 400)

_SKIP_NAMES = {".DS_Store", "Thumbs.db"}


def _settings():  # heavy imports stay out of the entry module's top level (vLLM spawns)
    from pydantic import ValidationError

    from kb.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:  # a KB_* variable wrong: which, and why, in words (no traceback)
        for error in exc.errors():
            where = "KB_" + "__".join(str(part) for part in error["loc"]).upper()
            console.print(Text("error: ", style="red") + Text(f"{where}: {error['msg']}"), soft_wrap=True)
        raise typer.Exit(2) from exc


@contextmanager
def _store_errors() -> Iterator[None]:
    """A store that cannot be opened or used at start (down, wrong URL or database, missing bucket): one line in
    words and status 1, not a traceback. Messages name hosts, never passwords (URLs are shown redacted)."""
    try:
        yield
    except Exception as exc:  # whatever stops the start is reported the same way
        from kb.outages import store_down_in_chain

        first = (str(exc).strip().splitlines() or [""])[0]
        store = store_down_in_chain(exc)
        hint = f" (the {store}: check {_STORE_SETTINGS[store]})" if store in _STORE_SETTINGS else ""
        console.print(Text("error: ", style="red") + Text(f"cannot start: {type(exc).__name__}: {first}{hint}"),
                      soft_wrap=True)  # fmt: skip
        raise typer.Exit(1) from exc


# Where each store is set, for the one line an unreachable store gets at start.
_STORE_SETTINGS = {"registry": "KB_REGISTRY_URL", "index": "KB_INDEX__URL", "blobs": "KB_BLOBS__*"}


def _files(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each file with the name the summary gives it: its path relative to the folder given (prefixed with that
    folder's name when several paths are given), or the path as given."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            prefix = Path(path.resolve().name) if len(paths) > 1 else Path()
            found.extend(
                (p, str(prefix / p.relative_to(path)))
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.name not in _SKIP_NAMES
            )
        elif path.is_file():
            found.append((path, str(path)))
        else:
            raise typer.BadParameter(f"{path}: no such file or directory")
    return found


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="The API and the web page only: ingestion runs in `kb worker` processes "
                     "sharing the registry, index and blob store (as KB_INGEST__WORKERS=0)"),
    ] = False,
) -> None:
    """Run the API, the web page and the ingest worker on the data directory."""
    # vLLM's loggers then go through kb's own handler: one format (JSON lines by default), one stream, one level.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    import uvicorn

    from service.app import create_app
    from service.datadir import DataDirLock
    from service.observability import configure_logging

    settings = _settings()
    if no_worker:
        settings.ingest.workers = 0
    lock = DataDirLock(settings.resolved_data_dir)
    if not lock.try_acquire():
        console.print(f"[red]error:[/] {lock.busy_message()}")
        raise typer.Exit(2)
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        lock.publish_server(url)
        with _store_errors():  # the registry holds the bootstrap key: down, wrong URL
            _announce(settings, url)
        configure_logging(settings.logging)
        # uvicorn's own logging config and access log would bypass the JSON lines (ours carry the request id).
        # Keep-alive longer than the idle timeout of the proxies and load balancers in front (often 60 s): a proxy
        # that reuses a connection the server has just closed answers its client 502.
        # With trusted proxies configured, the TCP peer decides who signs in (service.auth.TrustedProxy): uvicorn must
        # not replace it with X-Forwarded-For (by default it does for a peer at 127.0.0.1, a proxy on the same host).
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                    timeout_keep_alive=75, proxy_headers=not settings.auth.trusted_proxies)  # fmt: skip
    finally:
        lock.release()


def _shared_only_message(settings: Any) -> str | None:
    """Why this process cannot run beside others on the same stores: the parts only one process may open."""
    alone = []
    if not settings.registry_url:
        alone.append("the registry is the data directory's SQLite file (set KB_REGISTRY_URL to a PostgreSQL database)")
    if settings.index.backend == "edge" or not settings.index.url.startswith(("http://", "https://")):
        alone.append("the index is opened in process (set KB_INDEX__BACKEND=qdrant and KB_INDEX__URL to a Qdrant "
                     "server)")  # fmt: skip
    return "; ".join(alone) or None


@app.command()
def worker(
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ingestion workers in this process (KB_INGEST__WORKERS)")
    ] = None,
) -> None:
    """Run ingestion workers only (no API, no generator): take jobs from the shared registry until stopped."""
    import signal
    import threading

    from ingest.tier import WorkerTier
    from service.datadir import DataDirLock
    from service.observability import configure_logging

    settings = _settings()
    if workers is not None:
        settings.ingest.workers = workers
    lock = DataDirLock(settings.resolved_data_dir)
    alone = _shared_only_message(settings)
    # On the embedded default the stores belong to one process at a time: the data directory's lock says whose.
    if alone and not lock.try_acquire():
        console.print(
            f"[red]error:[/] {lock.busy_message()}. `kb serve` runs the ingestion workers itself; separate "
            f"`kb worker` processes need stores every process can open: {alone}."
        )
        raise typer.Exit(2)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    configure_logging(settings.logging)
    tier = WorkerTier(settings)
    try:
        with _store_errors():
            tier.open()
        # A log line, like the rest of what this process says: one format (JSON lines in production) on stderr.
        logging.getLogger("kb.worker").info("kb worker: %d ingestion worker(s), registry %s",
                                            max(1, settings.ingest.workers),
                                            _redacted_url(settings.resolved_registry_url))  # fmt: skip
        status = tier.run(stop)
    finally:
        tier.close()
        lock.release()
    if any(w.running for w in tier.workers):
        # A worker thread still inside torch or the index client past the stop timeout (its job already handed back):
        # leave without the interpreter's shutdown, which would tear down the libraries under it (SIGABRT).
        logging.shutdown()
        sys.stderr.flush()
        os._exit(status)
    raise typer.Exit(status)


@app.command()
def migrate() -> None:
    """Create or upgrade the registry's tables and the index's collection (with its shards and payload indexes), then
    exit: a deployment's one-shot step before its API and worker processes start. Safe to run again."""
    from kb.container import Container
    from service.datadir import DataDirLock

    settings = _settings()
    lock = DataDirLock(settings.resolved_data_dir)
    if _shared_only_message(settings) and not lock.try_acquire():
        console.print(f"[red]error:[/] {lock.busy_message()}")
        raise typer.Exit(2)
    try:
        with _store_errors(), _library_output(_log_path(settings, None), verbose=False):
            container = Container.open(settings)  # the registry migrates itself on open; the index creates its collection
            try:
                container.blobs.check()
                documents = len(container.registry.list_documents())
                chunks = container.index.count()
            finally:
                import asyncio

                asyncio.run(container.aclose())
    finally:
        lock.release()
    index = settings.index
    where = f"Qdrant {index.url} collection {index.collection!r}" if index.backend == "qdrant" else "Qdrant Edge"
    layout = f" ({index.shards} shard(s), replication factor {index.replication_factor})" if index.url.startswith(
        ("http://", "https://")) else ""  # fmt: skip
    # One line each, however narrow the terminal: a deployment's log keeps them whole.
    out.print(f"registry: {_redacted_url(settings.resolved_registry_url)}: schema up to date, {documents} document(s)",
              soft_wrap=True, highlight=False, markup=False)  # fmt: skip
    out.print(f"index: {where}{layout}: ready, {chunks} point(s)", soft_wrap=True, highlight=False, markup=False)


def _redacted_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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


@app.command()
def slack() -> None:
    """Run the Slack bot over Socket Mode (no public URL needed) as its own process on the data directory."""
    settings = _settings()
    missing = [name for name, token in (("KB_SLACK__BOT_TOKEN", settings.slack.bot_token),
                                        ("KB_SLACK__APP_TOKEN", settings.slack.app_token))
               if not token.get_secret_value()]  # fmt: skip
    if missing:
        console.print(
            f"[red]error:[/] {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. `kb slack` needs "
            "the bot token (xoxb-…, OAuth & Permissions) and an app-level token with connections:write (xapp-…, "
            "Basic Information), with Socket Mode turned on for the app: see deploy/slack/."
        )
        raise typer.Exit(2)
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # as `kb serve`: vLLM logs through kb's handler
    import asyncio
    import signal

    from service.datadir import DataDirLock
    from service.observability import configure_logging
    from service.slack.socket_mode import run_socket_mode_bot

    lock = DataDirLock(settings.resolved_data_dir)
    if not lock.try_acquire():
        console.print(
            f"[red]error:[/] {lock.busy_message()}. With `kb serve` running on it, give that server "
            "KB_SLACK__APP_TOKEN instead: it runs the bot over Socket Mode itself."
        )
        raise typer.Exit(2)

    async def run() -> str | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run_socket_mode_bot(settings, stop)

    try:
        configure_logging(settings.logging)
        console.print(f"Slack bot: Socket Mode, data directory {settings.resolved_data_dir}")
        failure = asyncio.run(run())
    finally:
        lock.release()
    if failure:
        console.print(f"[red]error:[/] {failure}")
        raise typer.Exit(1)


def _keys(settings: Any):
    from kb.container import build_registry
    from service.auth import ApiKeyService

    return ApiKeyService(build_registry(settings), settings.auth)


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="KB_URL",
        help="Talk to the kb server at this URL (key: KB_API_KEY) instead of the data directory",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Show the libraries' and the engine's messages (else: DATA_DIR/logs/cli.log)"),
]


@app.command()
def mcp(
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="KB_API_KEY", show_envvar=True,
                     help="The API key whose scopes and groups the tools answer within (prefer KB_API_KEY: a "
                     "command line is visible to other users); default: the data directory's local admin"),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Serve the MCP tools (search, ask, list_documents) over stdio, for Claude Desktop and other MCP clients."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # as `kb serve`: vLLM logs through kb's handler (stderr)
    from service.mcp.stdio import McpStartError, run_stdio
    from service.observability import configure_logging

    settings = _settings()
    configure_logging(settings.logging)
    try:
        run_stdio(settings, key=key, url=url, say=_say)
    except McpStartError as exc:
        console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from exc


def _log_path(settings: Any, url: str | None) -> Path | None:
    """Where the libraries' messages go when not --verbose: a log in the data directory (none for a remote server)."""
    return None if url else settings.resolved_data_dir / "logs" / "cli.log"


@contextmanager
def _library_output(log_path: Path | None, *, verbose: bool) -> Iterator[None]:
    """Keeps what parser libraries and the engine print (logging, warnings, bare lines written to stdout or stderr by
    C code or child processes such as the engine core) away from the command's own output, in `log_path`;
    --verbose shows them on stderr instead. The command's progress, tables and answers still reach the terminal."""
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    sink = _open_sink(log_path)
    saved_out, saved_err = os.dup(1), os.dup(2)
    console_file = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")
    out_file = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding=sys.stdout.encoding, errors="replace")
    console.file, out.file = console_file, out_file
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, sink):
            os.close(fd)
        console.file, out.file = None, None  # type: ignore[assignment]  # back to sys.stderr / sys.stdout
        console_file.close()
        out_file.close()


def _open_sink(log_path: Path | None) -> int:
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            pass
    return os.open(os.devnull, os.O_WRONLY)


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _no_documents(backend: Any, docs: list[dict[str, Any]], *, fresh: bool) -> str | None:
    """The message for a knowledge base with nothing to read from (None when there is something)."""
    if any(d.get("status") == "ready" for d in docs):
        return None
    where = backend.where()
    if docs:
        what = f"no ready documents in {where} ({len(docs)} not ready: see `kb documents`)"
    else:
        what = f"no documents in {where}" + (" (a new, empty data directory)" if fresh else "")
    local = not where.startswith("the server at")
    hint = (
        "; or point KB_DATA_DIR at the data directory you ingested into"
        if local and not os.environ.get("KB_DATA_DIR")
        else ""
    )
    return f"{what} — ingest some with `kb ingest PATH`{hint}"


@contextmanager
def _backend(settings: Any, *, with_generator: bool, url: str | None) -> Iterator[Any]:
    """The backend, closed after use; a server that does not start or refuses a request is an error in words."""
    from service.cli_backends import ServerError, ServerUnavailable, open_backend

    try:
        backend = open_backend(settings, with_generator=with_generator, url=url, say=_say)
    except ServerUnavailable as exc:
        console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        raise typer.Exit(3) from exc
    try:
        yield backend
    except ServerError as exc:
        console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        raise typer.Exit(1) from exc
    finally:
        backend.close()


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
    group: Annotated[list[str], typer.Option("--group", "-g", help="Access group (repeatable)")] = [],  # noqa: B006
    url: UrlOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Ingest files and folders; exits non-zero if any file did not end ready, naming each."""
    files = _files(paths)
    if not files:
        console.print("[red]error:[/] no files found")
        raise typer.Exit(2)
    settings = _settings()
    results: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[str, str]] = []
    submitted: dict[str, str] = {}
    interrupted: str | None = None
    with (
        _library_output(_log_path(settings, url), verbose=verbose),
        _backend(settings, with_generator=False, url=url) as backend,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("ingesting", total=len(files))
        try:
            for path, name in files:
                try:
                    document = backend.submit(path, group)
                except Exception as exc:  # noqa: BLE001 - a rejected upload is reported, the rest go on
                    rejected.append((name, str(exc)))
                    progress.advance(task)
                    continue
                submitted[document["document_id"]] = name
                if document["status"] in ("ready", "failed"):
                    results[document["document_id"]] = document
                    progress.advance(task)

            def on_update(document: dict[str, Any]) -> None:
                document_id = document["document_id"]
                if document["status"] in ("ready", "failed") and document_id not in results:
                    results[document_id] = document
                    progress.advance(task)
                    progress.update(task, description=f"ingested {submitted.get(document_id, '')}")

            for document in backend.wait(list(submitted), on_update):
                on_update(document)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the summary still ends the run
            interrupted = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    table = Table(title="kb ingest")
    table.add_column("file", overflow="fold", ratio=3)
    table.add_column("status", no_wrap=True)
    table.add_column("pages", no_wrap=True, justify="right")
    table.add_column("chunks", no_wrap=True, justify="right")
    table.add_column("error", overflow="fold", ratio=2)
    failed: list[tuple[str, str, str]] = []
    for document_id, name in submitted.items():
        document = results.get(document_id, {})
        status = document.get("status") or "unfinished"
        if status != "ready":
            failed.append((name, status, document.get("error") or ""))
        style = "green" if status == "ready" else "red"
        table.add_row(Text(name), Text(status, style=style), str(document.get("pages") or ""),
                      str(document.get("chunks") or ""), Text(document.get("error") or ""))  # fmt: skip
    for name, error in rejected:
        failed.append((name, "rejected", error))
        table.add_row(Text(name), Text("rejected", style="red"), "", "", Text(error))
    console.print(table)
    # One line per file that did not end ready: whole names, for logs and grep, however narrow the table.
    for name, status, error in failed:
        console.print(f"{status}: {name}" + (f": {error}" if error else ""), markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
    console.print(f"{len(files) - len(failed)} ready, {len(failed)} failed", highlight=False)
    if interrupted:
        console.print(Text("error: ", style="red") + Text(f"stopped before every file was done: {interrupted}"),
                      soft_wrap=True)  # fmt: skip
    if failed or interrupted:
        raise typer.Exit(1)


@app.command()
def search(
    query: str,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    url: UrlOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Retrieve the passages that best match a query."""
    settings = _settings()
    fresh = not url and not settings.resolved_data_dir.exists()
    empty: str | None = None
    with (
        _library_output(_log_path(settings, url), verbose=verbose),
        _backend(settings, with_generator=False, url=url) as backend,
    ):
        empty = _no_documents(backend, backend.documents(), fresh=fresh)
        result = {"passages": []} if empty else backend.search(query, top_k)
    if empty:
        console.print(empty, markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"passages": result["passages"]}, ensure_ascii=False))
        return
    for i, passage in enumerate(result["passages"], 1):
        where = passage["filename"] + (f" p.{passage['page']}" if passage.get("page") else "")
        out.print(f"{i}. {where}  score={passage['score']:.3f}", markup=False, style="bold")
        out.print(passage["text"][:400], markup=False)
        out.print()


@app.command()
def ask(
    question: str,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    url: UrlOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Answer a question from the documents, with citations."""
    if not verbose:
        # One question: the engine's start-up chatter is for operators of a server (`kb serve` keeps it), not here.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    settings = _settings()
    fresh = not url and not settings.resolved_data_dir.exists()
    with (
        _library_output(_log_path(settings, url), verbose=verbose),
        _backend(settings, with_generator=True, url=url) as backend,
    ):
        empty = _no_documents(backend, backend.documents(), fresh=fresh)
        answer = None
        if not empty:
            # On a terminal only (transient): the first question starts the engine, a minute on a CPU.
            with console.status("answering (the first question starts the engine)…"):
                answer = backend.ask(question)
    if empty or answer is None:
        console.print(empty, markup=False, highlight=False, soft_wrap=True)
        if as_json:
            print(json.dumps({"error": {"message": empty, "type": "no_documents"}}, ensure_ascii=False))
        raise typer.Exit(1)
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
def documents(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    url: UrlOption = None,
    verbose: VerboseOption = False,
) -> None:
    """List documents with their status, error, pages and chunks."""
    settings = _settings()
    fresh = not url and not settings.resolved_data_dir.exists()
    with (
        _library_output(_log_path(settings, url), verbose=verbose),
        _backend(settings, with_generator=False, url=url) as backend,
    ):
        docs = backend.documents()
        empty = None if docs else _no_documents(backend, docs, fresh=fresh)
    if empty:
        console.print(empty, markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"documents": docs}, ensure_ascii=False))
        return
    if not docs:
        return
    table = Table()
    table.add_column("document_id", overflow="fold", ratio=2)
    table.add_column("filename", overflow="fold", ratio=3)
    table.add_column("status", no_wrap=True)
    for column in ("pages", "chunks"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("error", overflow="fold", ratio=2)
    for d in docs:
        table.add_row(d["document_id"], Text(d["filename"]), d["status"], str(d.get("pages") or ""),
                      str(d.get("chunks") or ""), Text(d.get("error") or ""))  # fmt: skip
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
    scopes: Annotated[
        list[str], typer.Option("--scopes", help="search, ask, ingest, admin, metrics (comma-separated or repeated)")
    ],
    groups: Annotated[
        list[str] | None,
        typer.Option("--groups", help="Document groups it may see ('*': all; default: the configured default groups)"),
    ] = None,
    name: Annotated[str, typer.Option(help="What the key is for")] = "",
    expires_in: Annotated[
        str | None,
        typer.Option("--expires-in", help="Refuse the key after this long: 90s, 30m, 12h, 30d, 8w (default: never)"),
    ] = None,
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
    console.print(
        f"created key {key.key_id} ({key.name}): scopes {', '.join(key.scopes)}; groups {', '.join(key.groups)}{expiry}"
    )
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
    cache_dir: Annotated[
        Path | None, typer.Option(help="Unit embedding cache (default: beside the models dir)")
    ] = None,
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
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
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
            prepared,
            [search_mode],
            limit,
            lambda done, total: progress.update(asking, completed=done, total=total),
        )
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return
    table = Table(title=f"kb eval retrieval: {report['name']} ({report['mode']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "questions",
        "units",
        "recall@1",
        "recall@5",
        "recall@10",
        "mrr@10",
        "ndcg@10",
        "latency_ms_p50",
        "latency_ms_p95",
    ):
        table.add_row(key, str(report[key]))
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
