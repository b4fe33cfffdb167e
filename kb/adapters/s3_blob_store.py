"""Originals in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...), one object per document
id under `{prefix}{id[:2]}/{id}`, so that API replicas and ingestion workers on other machines share them.

boto3 rather than obstore: boto3 is AWS's own, maintained SDK and resolves credentials through the standard chain
that deployments already use (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and shared files, IRSA web
identity tokens on Kubernetes, ECS task roles, EC2 instance roles) with no code of ours; `endpoint_url` reaches every
S3-compatible store; its retries (standard mode: exponential backoff with jitter on throttling, 5xx and connection
errors) and s3transfer's multipart uploads and consistent ranged downloads (If-Match on the ETag) come with it; and
moto's server speaks the same HTTP protocol on loopback for the contract suite. obstore is faster for many small
concurrent reads, which this store does not do (one original per ingestion, one per download).

One boto3 client is made in __init__ and shared by every thread (clients are thread-safe; sessions are not). Nothing
here talks to the store before the first call: `check()` is the probe. A failed multipart upload is aborted by
s3transfer; a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up after a process killed mid-upload.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from kb.adapters.blob_store import checked_id

MB = 1024 * 1024
# Objects up to this size go in one PutObject; larger ones as a multipart upload of 8 MB parts, 4 at a time. Either
# way the object appears whole or not at all (S3 publishes a multipart object only when the upload completes).
TRANSFER = TransferConfig(multipart_threshold=16 * MB, multipart_chunksize=8 * MB, max_concurrency=4, use_threads=True)
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "originals/",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket")
        self._bucket = bucket
        self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        s3_options: dict = {}
        checksums: dict = {}
        if endpoint_url:
            # MinIO, Ceph and most S3-compatible stores address buckets by path (virtual hosts need DNS set up for
            # them), and several reject the CRC checksums botocore sends by default since 1.36 unless asked for.
            s3_options["addressing_style"] = "path"
            checksums = {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # Worker and API threads, each upload up to TRANSFER.max_concurrency parts: room for them all.
            max_pool_connections=32,
            s3=s3_options,
            **checksums,
        )
        # A session of its own: boto3's default session is module state, not safe to create clients from in threads.
        session = boto3.session.Session()
        where = {"endpoint_url": endpoint_url or None, "region_name": region or None}
        self._client = session.client("s3", config=config, **where)
        # The readiness probe fails fast instead of retrying for half a minute against a dead endpoint.
        probe_config = config.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=10))
        self._probe = session.client("s3", config=probe_config, **where)
        self.endpoint = self._client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self._bucket!r}, prefix={self._prefix!r}, endpoint={self.endpoint!r})"

    def key(self, document_id: str) -> str:
        """The object key of an id (ValueError for an id that is not one)."""
        document_id = checked_id(document_id)
        return f"{self._prefix}{document_id[:2]}/{document_id}"

    def put(self, document_id: str, data: bytes) -> None:
        self._client.upload_fileobj(io.BytesIO(data), self._bucket, self.key(document_id), Config=TRANSFER)

    def read(self, document_id: str) -> bytes:
        key = self.key(document_id)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"no original {document_id!r} in {self}") from exc
            raise
        with response["Body"] as body:
            return body.read()

    @contextmanager
    def local_file(self, document_id: str) -> Iterator[Path]:
        key = self.key(document_id)
        # Streamed to disk (ranged GETs of one ETag for a large object), never held in memory; in TMPDIR.
        fd, name = tempfile.mkstemp(prefix="kb-original-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    self._client.download_fileobj(self._bucket, key, fh, Config=TRANSFER)
                except ClientError as exc:
                    if _missing(exc):
                        raise FileNotFoundError(f"no original {document_id!r} in {self}") from exc
                    raise
            yield path
        finally:
            path.unlink(missing_ok=True)

    def delete(self, document_id: str) -> None:
        # S3 answers 204 for a key that is not there: deleting a missing id is a no-op, as the port asks.
        self._client.delete_object(Bucket=self._bucket, Key=self.key(document_id))

    def check(self) -> None:
        """The bucket exists and these credentials may use it (HeadBucket); one attempt, short timeouts."""
        where = f"S3 bucket {self._bucket!r} at {self.endpoint}"
        try:
            self._probe.head_bucket(Bucket=self._bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in {"404", "NoSuchBucket", "NotFound"} or status == 404:
                reason = "the bucket does not exist"
            elif code in {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or (
                status == 403
            ):
                reason = "access denied: check the credentials (AWS_* variables, IRSA, instance role) and bucket policy"
            else:
                reason = f"{code or status}: {exc}"
            raise RuntimeError(f"blob store unusable: {where}: {reason}") from exc
        except NoCredentialsError as exc:
            raise RuntimeError(f"blob store unusable: {where}: no AWS credentials found") from exc
        except BotoCoreError as exc:  # endpoint down, DNS, TLS, timeouts
            raise RuntimeError(f"blob store unreachable: {where}: {exc}") from exc


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING
