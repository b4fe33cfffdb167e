"""The Registry on SQLAlchemy: SQLite for the embedded default, PostgreSQL in production.

One class implements all the smaller ports of kb.ports (DocumentStore, JobQueue, ConversationStore, KeyStore,
FeedbackStore, EventLog) in one database: a job references its document, a document and its job are written in one transaction, and deleting a
document ends its jobs' leases in the same one; conversations and keys share the connection pool and the schema's
migrations rather than each opening a database of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    bindparam,
    case,
    create_engine,
    event,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from kb.models import ApiKey, Document, DocumentStatus, Feedback, FeedbackRating, Job


_FORGET_BATCH = 500  # conversations per transaction (forget_conversations)


def _now() -> datetime:
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    pass


class _DocumentRow(_Base):
    __tablename__ = "documents"

    document_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    collection: Mapped[str] = mapped_column(String(255), default="", index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    live_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)

    def to_model(self) -> Document:
        return Document(
            document_id=self.document_id,
            filename=self.filename,
            content_type=self.content_type,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            status=DocumentStatus(self.status),
            error=self.error,
            pages=self.pages,
            chunks=self.chunks,
            groups=list(self.groups or []),
            metadata=dict(self.metadata_ or {}),
            version=self.version,
            live_version=self.live_version,
            progress=dict(self.progress or {}),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class _JobRow(_Base):
    __tablename__ = "jobs"
    # SQLite reuses the largest rowid after a delete unless the table is AUTOINCREMENT; a job id must never come back
    # (a worker of a deleted document's job would otherwise hold the id of the next upload's job).
    __table_args__ = {"sqlite_autoincrement": True}

    job_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("documents.document_id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the claim's lease token
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # retry backoff
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _MessageRow(_Base):
    """One turn of a conversation: the question or the answer, with the sources it was given (for reuse)."""

    __tablename__ = "messages"

    message_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _ConversationRow(_Base):
    """Who a conversation belongs to: only that key may continue it or read it back."""

    __tablename__ = "conversations"

    conversation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A key's id, or `user:<name>` for a user signed in through the proxy (255 since 2026-11-30: _migrate_owner_width).
    owner: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _FeedbackRow(_Base):
    """A reader's rating of an answer, with the question, the answer and its sources (kb.ports.Feedback)."""

    __tablename__ = "feedback"

    feedback_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    principal_id: Mapped[str] = mapped_column(String(255), index=True)
    rating: Mapped[str] = mapped_column(String(8), index=True)  # up | down
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # web | slack | api
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)

    def to_model(self) -> Feedback:
        return Feedback(
            feedback_id=self.feedback_id, principal_id=self.principal_id, rating=self.rating,  # type: ignore[arg-type]
            question=self.question, answer=self.answer, comment=self.comment, citations=list(self.citations or []),
            conversation_id=self.conversation_id, source=self.source,  # type: ignore[arg-type]
            groups=list(self.groups or []), created_at=_aware(self.created_at),
        )  # fmt: skip


class _RevokedSessionRow(_Base):
    """A web-page session token signed out before its expiry (by its nonce): refused until then, then pruned."""

    __tablename__ = "revoked_sessions"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class _ProcessedEventRow(_Base):
    """An event (a Slack event_id) some process has taken in hand: a retry of it finds the row and is dropped."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


class _ApiKeyRow(_Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the key (keys are 256-bit random)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Added 2026-11-30: registries created before get it from SqlRegistry._migrate_api_keys_expiry.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_model(self) -> ApiKey:
        return ApiKey(
            key_id=self.key_id,
            name=self.name,
            prefix=self.prefix,
            scopes=list(self.scopes or []),
            groups=list(self.groups or []),
            created_at=_aware(self.created_at),
            revoked_at=_aware(self.revoked_at),
            last_used_at=_aware(self.last_used_at),
            expires_at=_aware(self.expires_at),
        )


def _lease_held(job: Job) -> Any:
    """EXISTS: the claim `job` still holds its lease (the job row is there, running, under this claim's token)."""
    return (
        select(_JobRow.job_id)
        .where(_JobRow.job_id == job.job_id, _JobRow.lease_owner == job.lease, _JobRow.state == "running")
        .exists()
    )


TITLE_CHARS = 80


def _title(question: str) -> str:
    """A conversation's title: its first question on one line, cut to TITLE_CHARS (an ellipsis marks the cut)."""
    text = " ".join(question.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# pg_advisory_lock key of the registry's schema changes (any constant: "kbschema" in ASCII, cut to 63 bits).
_SCHEMA_LOCK_KEY = 0x6B62736368656D61


class SqlRegistry:
    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10) -> None:
        """`pool_size`, `max_overflow`: PostgreSQL connections this process keeps open, and may open beyond them
        under load (SQLAlchemy's QueuePool); each API replica and worker process holds its own pool."""
        options: dict[str, Any] = {}
        if make_url(url).get_backend_name() == "postgresql":
            # A database behind a dead route would hang each connect for minutes: fail within seconds (503), and
            # test pooled connections before use, so one dropped by a restarted server is replaced, not an error.
            # A pooled connection whose peer vanished without a word (a failover, a dropped NAT entry) is found dead
            # by TCP keepalives after ~60 s idle, and a query waiting on it gives up after 30 s unacknowledged,
            # instead of the kernel's ~15 minutes of retransmissions.
            keepalive = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
                         "tcp_user_timeout": 30_000}  # fmt: skip
            options = {"connect_args": {"connect_timeout": 5, **keepalive}, "pool_pre_ping": True,
                       "pool_size": pool_size, "max_overflow": max_overflow}  # fmt: skip
        self._engine = create_engine(url, future=True, **options)
        if self._engine.dialect.name == "sqlite":

            @event.listens_for(self._engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                # With WAL, NORMAL survives a killed process; only a power cut can lose the last commits, which the
                # job queue redoes. FULL fsyncs every progress update.
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        with self._schema_lock():
            _Base.metadata.create_all(self._engine)
            self._migrate_api_keys_expiry()
            self._migrate_jobs_autoincrement()
            self._migrate_owner_width()
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """One process at a time creates or upgrades the tables: two `kb migrate` at once, or API and worker pods
        starting together on an empty database, would otherwise race in CREATE TABLE (a duplicate pg_type row).
        PostgreSQL: a session advisory lock on a connection of its own; SQLite: the data directory's lock."""
        if self._engine.dialect.name != "postgresql":
            yield
            return
        with self._engine.connect() as connection:
            connection.execute(sql_text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sql_text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                connection.commit()

    def _migrate_jobs_autoincrement(self) -> None:
        """Registries created before 2026-11-30 have a SQLite jobs table that reuses ids: rebuild it as
        AUTOINCREMENT, keeping its rows (PostgreSQL's sequences never reuse ids)."""
        if self._engine.dialect.name != "sqlite":
            return
        with self._engine.begin() as conn:
            ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type='table' AND name='jobs'").scalar()
            if not ddl or "AUTOINCREMENT" in ddl.upper():
                return
            conn.exec_driver_sql("ALTER TABLE jobs RENAME TO jobs_reused_ids")
            for (index,) in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='jobs_reused_ids' AND sql IS NOT NULL"
            ).all():
                conn.exec_driver_sql(f'DROP INDEX "{index}"')
            _JobRow.__table__.create(conn)
            columns = ", ".join(c.name for c in _JobRow.__table__.columns)
            conn.exec_driver_sql(f"INSERT INTO jobs ({columns}) SELECT {columns} FROM jobs_reused_ids")
            conn.exec_driver_sql("DROP TABLE jobs_reused_ids")

    @staticmethod
    def _fenced(statement: Any, fence: Job | None) -> Any:
        """`statement` (an UPDATE) restricted to the moment `fence`'s claim still holds its lease."""
        if fence is None:
            return statement
        return statement.where(_lease_held(fence))

    def _session(self) -> Session:
        return self._sessions()

    def add_document(self, document: Document, *, enqueue: bool = False) -> Document:
        """`enqueue`: its ingestion job too, in the same transaction (never a document without its job)."""
        with self._session() as s, s.begin():
            row = _DocumentRow(
                document_id=document.document_id,
                filename=document.filename,
                content_type=document.content_type,
                sha256=document.sha256,
                size_bytes=document.size_bytes,
                status=document.status.value,
                error=document.error,
                pages=document.pages,
                chunks=document.chunks,
                groups=list(document.groups),
                metadata_=dict(document.metadata),
                collection=str(document.metadata.get("collection", "")),
                version=document.version,
                live_version=document.live_version,
                progress=dict(document.progress),
            )
            s.add(row)
            s.flush()
            if enqueue:
                s.add(_JobRow(document_id=document.document_id, state="queued", attempts=0))
            return row.to_model()

    def get_document(self, document_id: str) -> Document | None:
        with self._session() as s:
            row = s.get(_DocumentRow, document_id)
            return row.to_model() if row else None

    def find_by_sha256(self, sha256: str, groups: list[str] | None = None) -> Document | None:
        """The oldest document with these bytes; with `groups`, only one shared with exactly those groups (the same
        file uploaded for another audience is a separate document, never a link into one the uploader can't see)."""
        return self._first_with_groups(select(_DocumentRow).where(_DocumentRow.sha256 == sha256), groups)

    def find_by_name(self, filename: str, collection: str = "", groups: list[str] | None = None) -> Document | None:
        return self._first_with_groups(
            select(_DocumentRow).where(_DocumentRow.filename == filename, _DocumentRow.collection == collection),
            groups,
        )

    def _first_with_groups(self, query: Any, groups: list[str] | None) -> Document | None:
        with self._session() as s:
            for row in s.scalars(query.order_by(_DocumentRow.created_at)):
                if groups is None or set(row.groups or []) == set(groups):
                    return row.to_model()
            return None

    def new_version(
        self, document_id: str, *, sha256: str, size_bytes: int, content_type: str, enqueue: bool = False
    ) -> Document:
        """Record a new version of the document's content; searches keep seeing the live one until it is ready.
        `enqueue`: its ingestion job too, in the same transaction."""
        with self._session() as s, s.begin():
            row = s.get(_DocumentRow, document_id, with_for_update=True)
            if row is None:
                raise LookupError(f"no document {document_id}")
            row.version += 1
            row.sha256, row.size_bytes, row.content_type = sha256, size_bytes, content_type
            row.status, row.error, row.progress = DocumentStatus.QUEUED.value, None, {}
            s.flush()
            if enqueue:
                s.add(_JobRow(document_id=document_id, state="queued", attempts=0))
            return row.to_model()

    def set_live_version(self, document_id: str, version: int, *, fence: Job | None = None) -> bool:
        return self._update_document(document_id, {"live_version": version}, fence)

    def update_progress(self, document_id: str, progress: dict[str, Any], *, fence: Job | None = None) -> bool:
        return self._update_document(document_id, {"progress": dict(progress)}, fence)

    def _update_document(self, document_id: str, values: dict[str, Any], fence: Job | None) -> bool:
        statement = update(_DocumentRow).where(_DocumentRow.document_id == document_id).values(**values)
        with self._session() as s, s.begin():
            result = s.execute(self._fenced(statement, fence), execution_options={"synchronize_session": False})
            return result.rowcount == 1

    def list_documents(self) -> list[Document]:
        with self._session() as s:
            rows = s.scalars(select(_DocumentRow).order_by(_DocumentRow.created_at, _DocumentRow.filename))
            return [r.to_model() for r in rows]

    def set_status(
        self,
        document_id: str,
        status: DocumentStatus,
        *,
        error: str | None = None,
        pages: int | None = None,
        chunks: int | None = None,
        fence: Job | None = None,
    ) -> bool:
        values: dict[str, Any] = {"status": status.value, "error": error, "updated_at": _now()}
        if pages is not None:
            values["pages"] = pages
        if chunks is not None:
            values["chunks"] = chunks
        return self._update_document(document_id, values, fence)

    def delete_document(self, document_id: str) -> None:
        with self._session() as s, s.begin():
            row = s.get(_DocumentRow, document_id)
            if row is not None:
                s.execute(_JobRow.__table__.delete().where(_JobRow.document_id == document_id))
                s.delete(row)

    def enqueue_job(self, document_id: str) -> None:
        with self._session() as s, s.begin():
            s.add(_JobRow(document_id=document_id, state="queued", attempts=0))

    def retry_job(self, job: Job, *, error: str, delay_s: float) -> bool:
        """Put a job that hit a transient error back in the queue, not to be taken before `delay_s` from now."""
        return self._update_job(
            job, state="queued", error=error, lease_owner=None, lease_until=None,
            run_after=_now() + timedelta(seconds=delay_s),
        )  # fmt: skip

    def give_back_job(self, job: Job, *, delay_s: float = 0.0) -> bool:
        run_after = _now() + timedelta(seconds=delay_s) if delay_s > 0 else None
        return self._update_job(
            job, state="queued", attempts=_JobRow.attempts - 1, lease_owner=None, lease_until=None, run_after=run_after
        )

    def extend_lease(self, job: Job, lease_seconds: float) -> bool:
        return self._update_job(job, lease_until=_now() + timedelta(seconds=lease_seconds))

    def holds_lease(self, job: Job) -> bool:
        with self._session() as s:
            return bool(s.scalar(select(_lease_held(job))))

    def _update_job(self, job: Job, **values: Any) -> bool:
        """A write by the claim `job`: nothing happens unless it still holds its lease."""
        with self._session() as s, s.begin():
            result = s.execute(
                update(_JobRow)
                .where(_JobRow.job_id == job.job_id, _JobRow.lease_owner == job.lease, _JobRow.state == "running")
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            return result.rowcount == 1

    def release_leases(self) -> int:
        """Requeue every running job: called by a process that owns the registry alone, at start, after a crash."""
        with self._session() as s, s.begin():
            result = s.execute(
                update(_JobRow).where(_JobRow.state == "running").values(state="queued", lease_owner=None, lease_until=None)
            )
            return result.rowcount

    def claim_next_job(self, worker_id: str, lease_seconds: float) -> Job | None:
        # Another process may take the row we picked between our SELECT and UPDATE (SQLite has no SKIP LOCKED):
        # then pick again rather than report an empty queue.
        for _ in range(10):
            claimed = self._try_claim(worker_id, lease_seconds)
            if claimed is not False:
                return claimed
        return None

    def _try_claim(self, worker_id: str, lease_seconds: float) -> Job | None | bool:
        now = _now()
        with self._session() as s, s.begin():
            claimable = (
                (_JobRow.state == "queued") & ((_JobRow.run_after.is_(None)) | (_JobRow.run_after <= now))
            ) | ((_JobRow.state == "running") & (_JobRow.lease_until < now))
            query = select(_JobRow).where(claimable).order_by(_JobRow.job_id).limit(1)
            if self._engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = s.scalars(query).first()
            if row is None:
                return None
            # A token of this claim alone: a worker that claims the same job again later holds another one.
            lease = f"{uuid.uuid4().hex}@{worker_id}"[:128]
            job = Job(job_id=row.job_id, document_id=row.document_id, attempts=row.attempts + 1, lease=lease)
            # Compare-and-set so two processes sharing a SQLite file cannot both take the job.
            taken = s.execute(
                update(_JobRow)
                .where(_JobRow.job_id == job.job_id, _JobRow.state == row.state, _JobRow.attempts == row.attempts)
                .values(
                    state="running",
                    attempts=job.attempts,
                    lease_owner=lease,
                    lease_until=now + timedelta(seconds=lease_seconds),
                ),
                execution_options={"synchronize_session": False},
            )
            if taken.rowcount != 1:
                return False
            return job

    def finish_job(self, job: Job, *, error: str | None = None) -> bool:
        return self._update_job(job, state="failed" if error else "done", error=error, lease_until=None)

    def pending_jobs(self) -> int:
        with self._session() as s:
            return int(
                s.scalar(select(func.count()).select_from(_JobRow).where(_JobRow.state.in_(("queued", "running"))))
                or 0
            )

    def add_message(
        self, conversation_id: str, role: str, content: str, sources: list[dict[str, Any]] | None = None,
        owner: str | None = None,
    ) -> bool:
        with self._session() as s, s.begin():
            if owner is None:
                s.add(_MessageRow(conversation_id=conversation_id, role=role, content=content, sources=sources or []))
                return True
            # One statement: the row is written only while the conversation is `owner`'s. Deleted meanwhile (its
            # owner, or retention), the turn is not kept: it must not outlive its conversation, ownerless.
            values = select(
                literal(conversation_id, String), literal(role, String), literal(content, Text),
                bindparam("sources", sources or [], type_=JSON), literal(_now(), DateTime(timezone=True)),
            ).where(exists().where(
                _ConversationRow.conversation_id == conversation_id, _ConversationRow.owner == owner
            ))  # fmt: skip
            written = s.execute(insert(_MessageRow).from_select(
                ["conversation_id", "role", "content", "sources", "created_at"], values
            ).returning(_MessageRow.message_id))  # fmt: skip
            return written.first() is not None  # (psycopg gives no rowcount for INSERT ... SELECT)

    def conversation(
        self, conversation_id: str, limit: int = 20, sources: Literal["all", "last"] = "all"
    ) -> list[dict[str, Any]]:
        """The last `limit` messages, oldest first: {"role", "content", "sources"} (ConversationStore)."""
        with self._session() as s:
            if sources == "all":
                rows = s.scalars(
                    select(_MessageRow)
                    .where(_MessageRow.conversation_id == conversation_id)
                    .order_by(_MessageRow.message_id.desc())
                    .limit(limit)
                ).all()
                return [{"role": r.role, "content": r.content, "sources": list(r.sources or [])} for r in reversed(rows)]
            # The sources column of one row only: the others' are never read from the database.
            lines = s.execute(
                select(_MessageRow.message_id, _MessageRow.role, _MessageRow.content)
                .where(_MessageRow.conversation_id == conversation_id)
                .order_by(_MessageRow.message_id.desc())
                .limit(limit)
            ).all()
            last = next((line.message_id for line in lines if line.role == "assistant"), None)
            kept = s.scalar(select(_MessageRow.sources).where(_MessageRow.message_id == last)) if last else None
            return [
                {"role": line.role, "content": line.content,
                 "sources": list(kept or []) if line.message_id == last else []}
                for line in reversed(lines)
            ]  # fmt: skip

    def claim_conversation(self, conversation_id: str, owner: str) -> bool:
        """True if the conversation is new (it now belongs to `owner`) or already belongs to `owner`. An id whose
        messages have no owner (a Slack thread's, which no key owns) is nobody's to claim."""
        with self._session() as s:
            try:
                with s.begin():
                    row = s.get(_ConversationRow, conversation_id)
                    if row is not None:
                        return row.owner == owner
                    if s.scalar(select(exists().where(_MessageRow.conversation_id == conversation_id))):
                        return False
                    s.add(_ConversationRow(conversation_id=conversation_id, owner=owner))
                return True
            except IntegrityError:  # claimed at the same moment by another request
                row = s.get(_ConversationRow, conversation_id)
                return row is not None and row.owner == owner

    def conversation_owner(self, conversation_id: str) -> str | None:
        with self._session() as s:
            row = s.get(_ConversationRow, conversation_id)
            return row.owner if row is not None else None

    def _migrate_owner_width(self) -> None:
        """Conversations' owners were at most 64 characters (key ids) before users signed in through the proxy
        (`user:<name>`, up to 205): widen the PostgreSQL column (SQLite does not enforce a VARCHAR's length)."""
        if self._engine.dialect.name != "postgresql":
            return
        with self._engine.begin() as conn:
            width = conn.exec_driver_sql(
                "SELECT character_maximum_length FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'conversations' AND column_name = 'owner'"
            ).scalar()
            if width is not None and width < 255:
                conn.exec_driver_sql("ALTER TABLE conversations ALTER COLUMN owner TYPE VARCHAR(255)")

    def list_conversations(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        """`owner`'s conversations with messages, the most recently continued first: {"conversation_id", "title",
        "updated_at", "turns"}."""
        is_question = case((_MessageRow.role == "user", 1), else_=0)
        first_question = func.min(case((_MessageRow.role == "user", _MessageRow.message_id), else_=None))
        with self._session() as s:
            rows = s.execute(
                select(
                    _ConversationRow.conversation_id,
                    func.max(_MessageRow.created_at).label("updated_at"),
                    func.sum(is_question).label("turns"),
                    first_question.label("first_question"),
                    func.max(_MessageRow.message_id).label("last_message"),
                )
                .join(_MessageRow, _MessageRow.conversation_id == _ConversationRow.conversation_id)
                .where(_ConversationRow.owner == owner)
                .group_by(_ConversationRow.conversation_id)
                .order_by(func.max(_MessageRow.message_id).desc())
                .limit(max(0, limit))
            ).all()
            firsts = [r.first_question for r in rows if r.first_question is not None]
            questions = dict(
                s.execute(select(_MessageRow.message_id, _MessageRow.content).where(_MessageRow.message_id.in_(firsts)))
                .tuples()
                .all()
            ) if firsts else {}  # fmt: skip
        return [
            {
                "conversation_id": r.conversation_id,
                "title": _title(questions.get(r.first_question, "")),
                "updated_at": _aware(r.updated_at),
                "turns": int(r.turns or 0),
            }
            for r in rows
        ]

    def delete_conversation(self, conversation_id: str, owner: str) -> bool:
        with self._session() as s, s.begin():
            row = s.get(_ConversationRow, conversation_id, with_for_update=True)
            if row is None or row.owner != owner:
                return False
            s.execute(_MessageRow.__table__.delete().where(_MessageRow.conversation_id == conversation_id))
            s.delete(row)
            return True

    def forget_conversations(self, before: datetime) -> int:
        """In transactions of at most _FORGET_BATCH conversations: a large first run holds no long lock on the table
        every question writes to. A conversation continued meanwhile is kept (the condition is checked again)."""
        cutoff = self._stored_time(before)
        last = func.max(_MessageRow.created_at)
        stale_messages = (
            select(_MessageRow.conversation_id).group_by(_MessageRow.conversation_id).having(last < cutoff)
        )
        unanswered = select(_ConversationRow.conversation_id).where(
            _ConversationRow.created_at < cutoff,
            ~select(_MessageRow.message_id).where(_MessageRow.conversation_id == _ConversationRow.conversation_id)
            .exists(),
        )  # fmt: skip
        forgotten = 0
        while True:
            with self._session() as s, s.begin():
                ids = list(s.scalars(stale_messages.limit(_FORGET_BATCH)).all())
                if len(ids) < _FORGET_BATCH:
                    ids += s.scalars(unanswered.limit(_FORGET_BATCH - len(ids))).all()
                if not ids:
                    return forgotten
                recent = select(_MessageRow.conversation_id).where(
                    _MessageRow.conversation_id.in_(ids), _MessageRow.created_at >= cutoff
                )  # fmt: skip
                kept = set(s.scalars(recent).all())
                ids = [i for i in ids if i not in kept]
                s.execute(_MessageRow.__table__.delete().where(_MessageRow.conversation_id.in_(ids)))
                s.execute(_ConversationRow.__table__.delete().where(_ConversationRow.conversation_id.in_(ids)))
                forgotten += len(ids)

    def add_feedback(self, feedback: Feedback) -> Feedback:
        with self._session() as s, s.begin():
            row = _FeedbackRow(
                feedback_id=feedback.feedback_id, created_at=feedback.created_at or _now(),
                principal_id=feedback.principal_id, rating=feedback.rating, comment=feedback.comment,
                question=feedback.question, answer=feedback.answer, citations=list(feedback.citations),
                conversation_id=feedback.conversation_id, source=feedback.source, groups=list(feedback.groups),
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.to_model()

    def get_feedback(self, feedback_id: str) -> Feedback | None:
        with self._session() as s:
            row = s.get(_FeedbackRow, feedback_id)
            return row.to_model() if row is not None else None

    def list_feedback(
        self,
        *,
        rating: FeedbackRating | None = None,
        before: datetime | None = None,
        limit: int = 50,
        within_groups: Sequence[str] | None = None,
    ) -> list[Feedback]:
        """Newest first. The group rule (all of a record's groups among `within_groups`) is read in Python, page by
        page, so that `limit` counts the records returned, not the rows read."""
        found: list[Feedback] = []
        allowed = set(within_groups) if within_groups is not None else None
        cursor: tuple[datetime, str] | None = None
        page = max(limit, 100) if allowed is not None else limit
        if before is not None:  # SQLite compares the stored UTC wall time: compare in UTC
            before = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
            if self._engine.dialect.name == "sqlite":
                before = before.replace(tzinfo=None)
        with self._session() as s:
            while len(found) < limit:
                query = select(_FeedbackRow)
                if rating is not None:
                    query = query.where(_FeedbackRow.rating == rating)
                if before is not None:
                    query = query.where(_FeedbackRow.created_at < before)
                if cursor is not None:  # the next page: after the last row read, in (created_at, id) order
                    query = query.where(
                        (_FeedbackRow.created_at < cursor[0])
                        | ((_FeedbackRow.created_at == cursor[0]) & (_FeedbackRow.feedback_id < cursor[1]))
                    )
                rows = s.scalars(
                    query.order_by(_FeedbackRow.created_at.desc(), _FeedbackRow.feedback_id.desc()).limit(page)
                ).all()
                for row in rows:
                    if allowed is None or set(row.groups or []) <= allowed:
                        found.append(row.to_model())
                if len(rows) < page:
                    break
                cursor = (rows[-1].created_at, rows[-1].feedback_id)
        return found[:limit]

    def delete_feedback(self, feedback_id: str) -> bool:
        with self._session() as s, s.begin():
            result = s.execute(_FeedbackRow.__table__.delete().where(_FeedbackRow.feedback_id == feedback_id))
            return result.rowcount == 1

    def _migrate_api_keys_expiry(self) -> None:
        """`create_all` adds no column to an existing table: a registry created before keys could expire gets the
        nullable `api_keys.expires_at` here (idempotent; several replicas may start at once)."""
        with self._engine.begin() as conn:
            if self._engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at TIMESTAMP WITH TIME ZONE"
                )
                return
            columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(api_keys)").all()}
            if "expires_at" not in columns:
                conn.exec_driver_sql("ALTER TABLE api_keys ADD COLUMN expires_at DATETIME")

    def add_api_key(self, key: ApiKey, digest: str) -> ApiKey:
        with self._session() as s, s.begin():
            row = _ApiKeyRow(
                key_id=key.key_id, name=key.name, prefix=key.prefix, digest=digest,
                scopes=list(key.scopes), groups=list(key.groups), expires_at=key.expires_at,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.to_model()

    def api_key_by_digest(self, digest: str) -> ApiKey | None:
        with self._session() as s:
            row = s.scalar(select(_ApiKeyRow).where(_ApiKeyRow.digest == digest))
            return row.to_model() if row is not None else None

    def api_key_by_id(self, key_id: str) -> ApiKey | None:
        with self._session() as s:
            row = s.get(_ApiKeyRow, key_id)
            return row.to_model() if row is not None else None

    def list_api_keys(self) -> list[ApiKey]:
        with self._session() as s:
            return [r.to_model() for r in s.scalars(select(_ApiKeyRow).order_by(_ApiKeyRow.created_at)).all()]

    def revoke_api_key(self, key_id: str) -> bool:
        """False if there is no such key; revoking twice keeps the first time."""
        with self._session() as s, s.begin():
            row = s.get(_ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = _now()
            return True

    def revoke_session(self, nonce: str, expires_at: datetime) -> None:
        """Refuse the session token with this nonce from now until it would have expired anyway."""
        with self._session() as s, s.begin():
            s.execute(_RevokedSessionRow.__table__.delete().where(_RevokedSessionRow.expires_at < _now()))
            if s.get(_RevokedSessionRow, nonce) is None:
                s.add(_RevokedSessionRow(nonce=nonce, expires_at=expires_at))

    def session_revoked(self, nonce: str) -> bool:
        with self._session() as s:
            return s.get(_RevokedSessionRow, nonce) is not None

    def claim_event(self, event_id: str) -> bool:
        """One INSERT that does nothing when the id is there: the primary key decides between racing processes, in
        the database, with no read-then-write gap (and no IntegrityError to recover from)."""
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        table = _ProcessedEventRow.__table__
        statement = (
            insert(table).values(event_id=event_id, claimed_at=_now()).on_conflict_do_nothing().returning(table.c.event_id)
        )
        with self._session() as s, s.begin():
            return s.execute(statement).first() is not None  # a row back: this INSERT wrote it

    def forget_events(self, before: datetime) -> int:
        with self._session() as s, s.begin():
            result = s.execute(
                _ProcessedEventRow.__table__.delete().where(_ProcessedEventRow.claimed_at < self._stored_time(before))
            )
            return result.rowcount

    def _stored_time(self, moment: datetime) -> datetime:
        """`moment` as a bound value compares with stored times: UTC, and naive on SQLite (which keeps the UTC wall
        time as text and would otherwise compare the texts of two different offsets)."""
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.replace(tzinfo=None) if self._engine.dialect.name == "sqlite" else moment

    def touch_api_key(self, key_id: str) -> None:
        with self._session() as s, s.begin():
            s.execute(update(_ApiKeyRow).where(_ApiKeyRow.key_id == key_id).values(last_used_at=_now()))

    def close(self) -> None:
        self._engine.dispose()
