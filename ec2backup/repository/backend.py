"""Storage backends: a flat namespace of immutable objects ("data/ab/abcd...", "index/..").

Two implementations with the same small interface:
- `LocalBackend`: a directory; every write goes to a temporary file, is fsynced and renamed, so
  an object is either absent or complete (readers never see a torn object);
- `S3Backend`: a bucket + prefix through boto3 with the standard retry mode; objects larger than
  `MULTIPART_THRESHOLD` go up in multipart uploads. PUTs are atomic in S3, so the same
  all-or-nothing property holds. On a versioned bucket a delete leaves a delete marker, which
  ListObjectsV2 does not return, so deleted objects disappear from listings as required.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ec2backup.errors import NotFoundError, UserError
from ec2backup.repository import directio

# S3 caps a single PUT at 5 GiB, but retries of one big PUT resend everything; above 64 MiB we
# switch to multipart with 8 MiB parts (S3 and moto require >= 5 MiB for all but the last part).
# A default pack (16 MiB, plus at most one blob and its header) is one PUT: as multipart it
# would be 4-5 requests. Archive packs (128 MiB) go up in parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_PART_SIZE = 8 * 1024 * 1024
MULTIPART_CONCURRENCY = 4
# Incomplete multipart uploads under the repository are aborted this long after they start
# (the shortest S3 allows); no upload of ours takes a day.
ABORT_MULTIPART_DAYS = 1
ABORT_RULE_ID = "ec2backup-abort-incomplete-multipart"
# Object Lock repositories: a version prune deleted (a delete marker hides it) is expired this
# long after it became noncurrent, or when its lock ends if later (S3 honours the lock).
NONCURRENT_EXPIRY_DAYS = 1
# A conditional write that races another on the same key gets a 409; AWS: retry it.
CONDITIONAL_CONFLICT_RETRIES = 3

# Error codes that mean "no such object" (GET says NoSuchKey, HEAD only its status): only these.
# A 403 or 503 must never read as "absent" (a lock read as absent is a lock ignored).
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

Buffer = bytes | bytearray | memoryview
# An object's content: one buffer, or a list of chunks written back to back (packs).
Content = Buffer | list[bytes]


class ObjectMissing(NotFoundError):
    """A named object does not exist in the backend."""


class Backend(Protocol):
    url: str

    def put(self, name: str, data: Content) -> None: ...
    def create(self, name: str, data: Content) -> bool: ...
    def get(self, name: str) -> bytes: ...
    def get_range(self, name: str, offset: int, length: int) -> bytes: ...
    def size(self, name: str) -> int: ...
    def exists(self, name: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...
    def list_modified(self, prefix: str) -> Iterator[tuple[str, int, dt.datetime]]: ...
    def delete(self, name: str) -> None: ...
    def location(self) -> str: ...


# Objects at least this large (packs) are written around the page cache (ec2backup.repository.
# directio; measured: the kernel's copies into it were about a fifth of a full image backup's
# CPU here), staged through an aligned buffer of DIRECT_STAGE bytes per writing thread.
DIRECT_WRITE_MIN = 1024 * 1024
DIRECT_STAGE = 1024 * 1024


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._made_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._local = threading.local()  # each writing thread's O_DIRECT staging buffer

    def location(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.root / name

    def _ensure_dir(self, path: Path) -> None:
        if path in self._made_dirs:
            return
        path.mkdir(parents=True, exist_ok=True)
        with self._dirs_lock:
            self._made_dirs.add(path)

    def put(self, name: str, data: Content) -> None:
        self._write(name, data, replace=True)

    def create(self, name: str, data: Content) -> bool:
        """Write only if no object has the name (atomically); False if one already had it."""
        return self._write(name, data, replace=False)

    def _write(self, name: str, data: Content, replace: bool) -> bool:
        path = self._path(name)
        self._ensure_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            chunks = data if isinstance(data, list) else [data]
            self._write_chunks(tmp, fd, chunks)
            os.fsync(fd)  # the object must be on disk before its name is
            os.close(fd)
            fd = -1
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if the name exists: create-if-absent
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)  # make the rename itself durable
            finally:
                os.close(dfd)
            return True
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write_chunks(self, tmp: str, fd: int, chunks: list[Any]) -> None:
        """Write an object's chunks into `tmp` (open as `fd`): a large one staged through an
        aligned buffer of this thread's, DIRECT_STAGE bytes at a time, around the page cache."""
        if sum(len(c) for c in chunks) < DIRECT_WRITE_MIN:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            return
        buf: memoryview | None = getattr(self._local, "stage", None)
        if buf is None:
            buf = self._local.stage = directio.aligned_buffer(DIRECT_STAGE)
        writer = directio.BlockWriter(tmp, fd, max_write=DIRECT_STAGE)
        offset = filled = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = min(len(view), DIRECT_STAGE - filled)
                    buf[filled : filled + n] = view[:n]
                    filled, view = filled + n, view[n:]
                    if filled == DIRECT_STAGE:
                        writer.write(offset, buf, aligned=True)
                        offset, filled = offset + DIRECT_STAGE, 0
            writer.write(offset, buf[:filled], aligned=True)
        finally:
            writer.close()

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissing(f"object {name} not found in {self.root}") from exc

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise ObjectMissing(f"object {name} not found in {self.root}") from exc
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectMissing(f"object {name} not found in {self.root}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for name, size, _modified in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str) -> Iterator[tuple[str, int, dt.datetime]]:
        """(name, size, modification time as the file system sees it) under `prefix`."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for fname in files:
                if fname.startswith(".tmp-"):
                    continue  # an in-progress (or crashed) write, not an object
                full = os.path.join(dirpath, fname)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                modified = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
                yield os.path.relpath(full, self.root).replace(os.sep, "/"), st.st_size, modified

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()


class S3Backend:
    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or make_s3_client()
        # Set from the repository config: packs (data/...) are written in this class.
        self.data_storage_class: str | None = None

    def location(self) -> str:
        return self.url

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _missing(self, name: str, exc: Exception) -> ObjectMissing:
        return ObjectMissing(f"object {name} not found in {self.url}")

    def _raise_missing(self, name: str, exc: Any) -> None:
        """Turn a 404 into ObjectMissing; anything else (403, 503, ...) stays the error it is."""
        if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
            raise self._missing(name, exc) from exc

    def put(self, name: str, data: Content) -> None:
        self._write(name, data, {})

    def create(self, name: str, data: Content) -> bool:
        """Write only if no object has the name (`If-None-Match: *`, S3 conditional writes);
        False if one already had it. A 409 (a concurrent conditional write of the same key)
        is retried, as AWS advises."""
        from botocore.exceptions import ClientError

        for attempt in range(CONDITIONAL_CONFLICT_RETRIES + 1):
            try:
                self._write(name, data, {"IfNoneMatch": "*"})
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    return False
                if code != "ConditionalRequestConflict" or attempt == CONDITIONAL_CONFLICT_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _write(self, name: str, data: Content, condition: dict[str, str]) -> None:
        key = self._key(name)
        view = memoryview(b"".join(data) if isinstance(data, list) else data)
        extra: dict[str, Any] = {}
        if self.data_storage_class and name.startswith("data/"):
            extra["StorageClass"] = self.data_storage_class
        if len(view) <= MULTIPART_THRESHOLD:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(view), **extra, **condition
            )
            return
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        try:

            def part(number: int, start: int) -> dict[str, Any]:
                resp = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(view[start : start + MULTIPART_PART_SIZE]),
                )
                return {"ETag": resp["ETag"], "PartNumber": number}

            starts = range(0, len(view), MULTIPART_PART_SIZE)
            # parts go up in parallel: one S3 connection rarely exceeds ~100 MB/s
            with ThreadPoolExecutor(max_workers=MULTIPART_CONCURRENCY) as pool:
                parts = list(pool.map(part, range(1, len(starts) + 1), starts))
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            # best effort; the lifecycle rule `repo init` sets (AbortIncompleteMultipartUpload)
            # removes what is left when this fails too
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    # ---- S3 Object Lock (repository-format.md §10) -----------------------------------------
    def require_object_lock(self) -> None:
        """The bucket must have Object Lock enabled (only possible at its creation, or with
        versioning on and AWS's enable call): one line naming it otherwise."""
        from botocore.exceptions import ClientError

        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ObjectLockConfigurationNotFoundError":
                raise UserError(
                    f"bucket {self.bucket} has no Object Lock: create it with Object Lock "
                    "enabled (aws s3api create-bucket --object-lock-enabled-for-bucket)"
                ) from None
            raise
        if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise UserError(f"bucket {self.bucket}: Object Lock is not enabled")

    def retention(self, name: str) -> tuple[str | None, dt.datetime | None]:
        """(mode, retain-until) of the object's current version; (None, None) if unlocked."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            self._raise_missing(name, exc)
            raise
        until = head.get("ObjectLockRetainUntilDate")
        if isinstance(until, str):
            until = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
        return head.get("ObjectLockMode"), until

    def set_retention(self, name: str, mode: str, until: dt.datetime) -> None:
        """Lock the object's current version until `until` (S3 refuses shortening a
        COMPLIANCE lock; callers only ever extend)."""
        self.client.put_object_retention(
            Bucket=self.bucket,
            Key=self._key(name),
            Retention={"Mode": mode, "RetainUntilDate": until},
        )

    def ensure_abort_multipart_rule(self, expire_noncurrent: bool = False) -> str:
        """Make sure a lifecycle rule aborts this prefix's incomplete multipart uploads (an
        upload whose abort failed, a killed process: its parts are billed until aborted) and,
        with `expire_noncurrent` (an Object Lock repository), expires the versions prune
        deleted once their lock has ended (S3 never expires a locked version early).
        Returns what was done, or how to do it when this principal may not."""
        from botocore.exceptions import ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        rule: dict[str, Any] = {
            "ID": f"{ABORT_RULE_ID}{('-' + self.prefix.replace('/', '-')) if self.prefix else ''}",
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
        }
        if expire_noncurrent:
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": NONCURRENT_EXPIRY_DAYS}
        how = (
            f"add a lifecycle rule to bucket {self.bucket} with "
            f'{{"Filter": {{"Prefix": "{prefix}"}}, "Status": "Enabled", '
            f'"AbortIncompleteMultipartUpload": {{"DaysAfterInitiation": {ABORT_MULTIPART_DAYS}}}}}'
        )
        try:
            try:
                current = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
                rules = list(current.get("Rules", []))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            for r in rules:
                covers = (r.get("Filter") or {}).get("Prefix", r.get("Prefix", "")) or ""
                if (
                    r.get("Status") == "Enabled"
                    and "AbortIncompleteMultipartUpload" in r
                    and prefix.startswith(covers)
                    and (not expire_noncurrent or "NoncurrentVersionExpiration" in r)
                ):
                    return f"incomplete multipart uploads are aborted by rule {r.get('ID', '?')}"
            # the call replaces the whole configuration: keep every existing rule
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*rules, rule]}
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            return f"could not set a lifecycle rule ({code}): {how}"
        return (
            f"added lifecycle rule {rule['ID']}: incomplete multipart uploads are aborted "
            f"after {ABORT_MULTIPART_DAYS} day"
        )

    def _get(self, name: str, **kwargs: Any) -> bytes:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name), **kwargs)
        except ClientError as exc:
            self._raise_missing(name, exc)
            raise
        body: bytes = resp["Body"].read()
        return body

    def get(self, name: str) -> bytes:
        return self._get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get(name, Range=f"bytes={offset}-{offset + length - 1}")

    def size(self, name: str) -> int:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            self._raise_missing(name, exc)
            raise
        return int(resp["ContentLength"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for name, size, _modified in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str) -> Iterator[tuple[str, int, dt.datetime]]:
        """(name, size, last-modified datetime) of every object under `prefix`."""
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], int(obj["Size"]), obj["LastModified"]

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    # ---- archive tier (S3 Glacier classes) ------------------------------------------------
    def object_state(self, name: str) -> ObjectState:
        """Storage class, last-modified time and retrieval state of one object."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            self._raise_missing(name, exc)
            raise
        storage_class = head.get("StorageClass") or "STANDARD"
        restore = head.get("Restore") or ""
        if storage_class not in ARCHIVE_CLASSES:
            retrieval = "readable"
        elif 'ongoing-request="true"' in restore:
            retrieval = "in-progress"
        elif 'ongoing-request="false"' in restore:
            retrieval = "readable"  # a restored copy exists until its expiry
        else:
            retrieval = "archived"
        return ObjectState(
            storage_class=storage_class,
            size=int(head["ContentLength"]),
            last_modified=head["LastModified"],
            retrieval=retrieval,
        )

    def request_retrieval(self, name: str, days: int, tier: str) -> None:
        """RestoreObject (idempotent: a request already in progress is fine)."""
        from botocore.exceptions import ClientError

        try:
            self.client.restore_object(
                Bucket=self.bucket,
                Key=self._key(name),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise


# S3 classes whose objects must be restored (RestoreObject) before a GET.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# Minimum storage duration billed by each archive class: deleting earlier is charged as if the
# object had stayed that long (https://aws.amazon.com/s3/pricing/).
MINIMUM_STORAGE_DAYS = {"GLACIER": 90, "DEEP_ARCHIVE": 180}


@dataclass
class ObjectState:
    storage_class: str
    size: int
    last_modified: Any  # datetime
    retrieval: str  # readable | archived | in-progress


def make_s3_client() -> Any:
    """boto3 S3 client: standard retries; path-style addressing when an endpoint is configured
    (the lab and most S3-compatible stores have no virtual-host DNS)."""
    import boto3
    from botocore.config import Config

    s3_conf: dict[str, Any] = {}
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        s3_conf["addressing_style"] = "path"
    config = Config(
        retries={"mode": "standard", "max_attempts": 10},
        s3=s3_conf,  # type: ignore[arg-type]
        max_pool_connections=16,
    )
    return boto3.client("s3", config=config)


def open_backend(url: str) -> Backend:
    """A directory path (or file:// URL) or s3://bucket/prefix."""
    if not url:
        raise UserError("repository URL is empty (use --repo DIR or --repo s3://bucket/prefix)")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UserError(f"bad repository URL {url!r}: expected s3://bucket/prefix")
        return S3Backend(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalBackend(Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise UserError(f"bad repository URL {url!r}: only directories and s3:// are supported")
    return LocalBackend(Path(url).expanduser().absolute())
