"""Opening, creating and reading/writing objects of a repository.

Object namespace (see docs/repository-format.md):

    config                      plaintext JSON: format version, repository id, parameters
    keys/<id>                   plaintext JSON: master key wrapped by a password or KMS key
    data/<xx>/<pack id>         packs of encrypted blobs
    index/<id>                  encrypted: pack -> blobs
    maps/<xx>/<id>              encrypted: one block-map page
    restorepoints/<id>          encrypted: a restore point
    locks/<random id>           encrypted: a lock (rewritten in place to refresh it)
    checkpoints/<key id>        encrypted: resumable state of an unfinished volume backup
    marks/<random id>           encrypted: what a prune marked for deletion by a later prune

Every encrypted object except locks, checkpoints and marks is named by the BLAKE3 hash of its stored
bytes, so a reader detects a modified or swapped object by name mismatch before decrypting.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import zstandard
from pydantic import BaseModel, Field, ValidationError

from ec2backup import crypto, keys
from ec2backup.errors import NotFoundError, UserError, short_error
from ec2backup.repository.backend import Backend, ObjectMissing, S3Backend, open_backend
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE, PAGE_BLOCKS, PAGE_BYTES
from ec2backup.repository.index import (
    INDEX_MAGIC,
    BlobLoc,
    Index,
    IndexFile,
    IndexPack,
    IndexTable,
)
from ec2backup.repository.restorepoint import Resolution, RestorePoint

if TYPE_CHECKING:
    from ec2backup.repository.locks import Lock

# Version 2: block maps tell a written all-zero block (WRITTEN_ZERO_ID) from a hole (ZERO_ID).
# Version 3: index files are binary tables (index version 2) instead of JSON.
# Older repositories are still read (a zero entry of version 1 is a hole) and written in their
# own version's form, so the program that made them can still read everything in them.
FORMAT_VERSION = 3
WRITTEN_ZERO_VERSION = 2
BINARY_INDEX_FORMAT = 3
# Index files fetched at once while loading: enough to hide S3 latency, few enough that the
# files in flight (each up to ~7 MB, times ~3 while it is decrypted) stay a few tens of MB.
INDEX_FETCH_WINDOW = 4
CONFIG_NAME = "config"
DEFAULT_LOCK_TTL_SECONDS = 300
# Below this a holder refreshes more than every 2 s: storage latency alone could lose locks.
MIN_LOCK_TTL_SECONDS = 10
CONFIG_MAC_CONTEXT = "ec2backup 2026-12 config authentication v1"
# 16 MiB packs: 32-128 blocks per PUT (30x+ fewer requests than one object per block) and
# bounded memory (a backup holds two packs in RAM: one filling, one uploading); research
# measured 16-64 MiB as the sweet spot.
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
# zstd level 3: 350-420 MB/s per core on text and stores within 1% of level 19 on this data.
DEFAULT_COMPRESSION_LEVEL = 3
# Short restore point ids shown to users (like git); any unique prefix of >= 4 hex works.
SHORT_ID = 12
MIN_PREFIX = 4

# Prefix of each kind of encrypted object; also the associated data that binds its type.
KIND_PREFIX = {
    "index": "index/",
    "map": "maps/",
    "restorepoint": "restorepoints/",
}
# An operator's resolution of a restore point's anomaly, named by the restore point's id.
RESOLUTIONS_PREFIX = "resolutions/"
FANOUT_KINDS = {"map"}  # kinds stored under a two-hex-digit subdirectory


class CorruptObjectError(UserError):
    """An object failed verification (hash, authentication, parse): the message names it."""

    exit_code = 4


class RepositoryExists(UserError):
    """`init` where a repository is (or, racing, just came to be)."""


class ObjectLockSettings(BaseModel):
    """S3 Object Lock on everything a restore point needs (repository-format.md §10)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    # How long a restore point is kept when its writer does not say (a session says: its
    # policy's retention); its objects stay locked that long after its time, plus the margin.
    days: int = Field(ge=1, le=36_500)
    margin_days: int = Field(default=7, ge=0, le=3650)


class RepoConfig(BaseModel):
    version: int = FORMAT_VERSION
    id: str
    created: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    block_size: int = EBS_BLOCK_SIZE
    page_blocks: int = PAGE_BLOCKS
    cipher: str = "aes-256-gcm"
    compression: str = "zstd"
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    blob_id: str = "blake3-keyed"
    object_id: str = "blake3"
    pack_size: int = DEFAULT_PACK_SIZE
    # Archive repositories: the S3 storage class of packs (GLACIER, DEEP_ARCHIVE). Metadata
    # (config, keys, index, maps, restore points) stays STANDARD so listing, planning and
    # retention never need a retrieval. Absent = STANDARD (a hot repository).
    data_storage_class: str | None = None
    # Locks older than this (by the storage's clock) are stale; holders refresh five times per
    # TTL (docs §8). A repository parameter: every locker of it must use the same.
    lock_ttl_seconds: int = Field(default=DEFAULT_LOCK_TTL_SECONDS, ge=MIN_LOCK_TTL_SECONDS)
    # An Object Lock repository (absent: none; left out of the MAC then, as configs written
    # before the field existed have no such key).
    object_lock: ObjectLockSettings | None = None
    # Keyed BLAKE3 of the other fields (canonical JSON) under a key derived from the master
    # key: the config is plaintext (read before any key is open), and a changed parameter
    # (data_storage_class sending every pack to Glacier, a pack size, a version) must not be
    # taken on trust. Checked once the master key is open.
    mac: str = ""

    def canonical(self) -> bytes:
        exclude = {"mac"} | ({"object_lock"} if self.object_lock is None else set())
        return json.dumps(
            self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":")
        ).encode()

    def signed(self, master: bytes) -> RepoConfig:
        return self.model_copy(update={"mac": config_mac(master, self)})


def config_mac(master: bytes, config: RepoConfig) -> str:
    return crypto.keyed_hash(
        crypto.derive_key(master, CONFIG_MAC_CONTEXT), config.canonical()
    ).hex()


def config_bytes(config: RepoConfig) -> bytes:
    return config.model_dump_json(indent=2).encode()


def data_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


def read_password(password_file: str | None) -> bytes | None:
    """The repository password from --password-file or EC2BACKUP_REPO_PASSWORD (never argv)."""
    if password_file:
        try:
            with open(password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise UserError(f"cannot read password file {password_file}: {exc.strerror}") from exc
    env = os.environ.get("EC2BACKUP_REPO_PASSWORD")
    return env.encode() if env is not None else None


def repository_password(url: str) -> bytes | None:
    """A configured repository's password: from its Secrets Manager secret (backup account,
    home Region; the secret string is the password), None for a KMS repository (its key file
    is opened with the caller's role), else `EC2BACKUP_REPO_PASSWORD`."""
    from ec2backup import aws, config, installation

    settings = config.load().repository(url)
    if settings is not None and settings.password_secret:
        region = installation.home_region()
        try:
            value = aws.client("secretsmanager", region).get_secret_value(
                SecretId=settings.password_secret
            )
        except Exception as exc:
            raise UserError(
                f"repository {url}: cannot read its password secret "
                f"{settings.password_secret} in {region}: {short_error(exc)}"
            ) from exc
        return str(value["SecretString"]).encode()
    if settings is not None and settings.kms:
        return None
    return read_password(None)


class Repository:
    """An open repository: backend + config + derived keys."""

    def __init__(self, backend: Backend, config: RepoConfig, master: bytes, key_id: str) -> None:
        self.backend = backend
        self.config = config
        self.key_id = key_id
        if isinstance(backend, S3Backend):
            backend.data_storage_class = config.data_storage_class
        self._master = master
        self.data_key = crypto.derive_key(master, "ec2backup 2026-11 blob encryption v1")
        self.meta_key = crypto.derive_key(master, "ec2backup 2026-11 metadata encryption v1")
        self.id_key = crypto.derive_key(master, "ec2backup 2026-11 blob id v1")
        self.page_nonce_key = crypto.derive_key(master, "ec2backup 2026-11 map page nonce v1")
        self.meta = crypto.Sealer(self.meta_key)
        self._zc = zstandard.ZstdCompressor(level=DEFAULT_COMPRESSION_LEVEL)
        self._index: Index | None = None
        self._marked: Index | None = None
        # Locks this process holds on the repository: checked before writes others rely on.
        self.held_locks: set[Lock] = set()
        self.created_note = ""  # what `create` did beside the objects (S3 lifecycle rule)

    @property
    def marks_written_zeros(self) -> bool:
        """Do this repository's maps tell written zero blocks from holes (format >= 2)?"""
        return self.config.version >= WRITTEN_ZERO_VERSION

    @property
    def binary_index(self) -> bool:
        """Are this repository's index files written as binary tables (format >= 3)?"""
        return self.config.version >= BINARY_INDEX_FORMAT

    # ---- creation and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        url: str,
        password: bytes | None,
        kms_key_id: str | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        data_storage_class: str | None = None,
        lock_ttl_seconds: int = DEFAULT_LOCK_TTL_SECONDS,
        object_lock: ObjectLockSettings | None = None,
    ) -> Repository:
        backend = open_backend(url)
        if data_storage_class and not isinstance(backend, S3Backend):
            raise UserError(f"--storage-class {data_storage_class} needs an s3:// repository")
        if object_lock is not None:
            if not isinstance(backend, S3Backend):
                raise UserError("--object-lock needs an s3:// repository")
            backend.require_object_lock()
        if password is None and not kms_key_id:
            raise UserError(
                "no password and no KMS key: set EC2BACKUP_REPO_PASSWORD, use --password-file "
                "or --kms-key-id"
            )
        try:
            exists = backend.exists(CONFIG_NAME) or any(True for _ in backend.list("keys/"))
        except Exception as exc:
            raise UserError(f"cannot access {backend.location()}: {short_error(exc)}") from exc
        if exists:
            raise RepositoryExists(f"a repository already exists at {backend.location()}")
        config = RepoConfig(
            id=secrets.token_hex(32),
            pack_size=pack_size,
            compression_level=compression_level,
            data_storage_class=data_storage_class,
            lock_ttl_seconds=lock_ttl_seconds,
            object_lock=object_lock,
        )
        master = crypto.random_key()
        config = config.signed(master)
        wrapped: list[keys.KeyFile] = []
        if kms_key_id:  # first, so a bad KMS key fails before anything is written
            wrapped.append(keys.wrap_with_kms(master, kms_key_id, config.id))
        if password is not None:
            wrapped.append(keys.wrap_with_password(master, password, config.id))
        key_ids = [_save_key_file(backend, k) for k in wrapped]
        # config last: a repository "exists" only once it can be opened; created only if
        # absent, so of two `repo init`s racing (parallel first archive runs) one wins and the
        # other removes its key files (bound to a config id that never came to be)
        if not backend.create(CONFIG_NAME, config_bytes(config)):
            for kid in key_ids:
                backend.delete(f"keys/{kid}")
            raise RepositoryExists(
                f"a repository was created at {backend.location()} meanwhile (by another init)"
            )
        repo = cls(backend, config, master, key_ids[0])
        if isinstance(backend, S3Backend):
            repo.created_note = backend.ensure_abort_multipart_rule(
                expire_noncurrent=object_lock is not None
            )
        return repo

    @classmethod
    def open(cls, url: str, password: bytes | None) -> Repository:
        backend = open_backend(url)
        try:
            raw = backend.get(CONFIG_NAME)
        except ObjectMissing as exc:
            raise NotFoundError(
                f"no repository at {backend.location()} (create one with `ec2backup repo init`)"
            ) from exc
        except Exception as exc:
            raise UserError(f"cannot access {backend.location()}: {short_error(exc)}") from exc
        try:
            config = RepoConfig.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptObjectError(f"object config is corrupt: {exc.errors()[0]['msg']}") from exc
        if config.version > FORMAT_VERSION:
            raise UserError(
                f"repository format version {config.version} is newer than this program "
                f"supports ({FORMAT_VERSION}): upgrade ec2backup"
            )
        if config.block_size != EBS_BLOCK_SIZE or config.page_blocks != PAGE_BLOCKS:
            raise CorruptObjectError("object config is corrupt: unsupported block or page size")
        damaged: dict[str, str] = {}
        key_files = list_key_files(backend, damaged)
        bad = [f"key file keys/{kid[:12]} is damaged ({why})" for kid, why in damaged.items()]
        if not key_files:
            what = "; ".join(bad) or "no key files"
            raise CorruptObjectError(f"repository {backend.location()} has no usable key: {what}")
        reasons: list[str] = []
        # Password keys first: no network round trip; then KMS wrappings.
        ordered = sorted(key_files.items(), key=lambda kv: kv[1].kind != "password")
        if password is None and all(k.kind == "password" for k in key_files.values()):
            raise UserError("no password given: set EC2BACKUP_REPO_PASSWORD or use --password-file")
        for key_id, kf in ordered:
            if kf.kind == "password" and password is None:
                continue
            try:
                master = keys.unwrap(kf, config.id, password)
            except keys.KeyUnwrapError as exc:
                if str(exc) not in reasons:
                    reasons.append(str(exc))
                continue
            if not secrets.compare_digest(config.mac, config_mac(master, config)):
                raise CorruptObjectError(
                    f"object config of {backend.location()} is corrupt: it does not match its "
                    "authentication code (modified outside ec2backup?): refusing to use it"
                )
            return cls(backend, config, master, key_id)
        raise UserError(
            f"cannot open repository {backend.location()}: "
            f"{'; '.join(reasons + bad) or 'no usable key'}"
        )

    # ---- keys ------------------------------------------------------------------------------

    def add_key(self, password: bytes | None = None, kms_key_id: str | None = None) -> str:
        if (password is None) == (kms_key_id is None):
            raise UserError("give exactly one of a new password or --kms-key-id")
        if kms_key_id:
            kf = keys.wrap_with_kms(self._master, kms_key_id, self.config.id)
        else:
            assert password is not None
            kf = keys.wrap_with_password(self._master, password, self.config.id)
        return _save_key_file(self.backend, kf)

    def remove_key(self, key_id: str) -> str:
        files = list_key_files(self.backend)
        matches = [k for k in files if k.startswith(key_id)]
        if len(matches) != 1:
            raise NotFoundError(f"key {key_id!r} not found" if not matches else "ambiguous key id")
        if len(files) == 1:
            raise UserError("refusing to remove the last key of the repository")
        if matches[0] == self.key_id:
            raise UserError(
                "refusing to remove the key this command opened the repository with; "
                "open it with another key first"
            )
        self.backend.delete(f"keys/{matches[0]}")
        return matches[0]

    # ---- encrypted objects ----------------------------------------------------------------

    def object_name(self, kind: str, oid: str) -> str:
        prefix = KIND_PREFIX[kind]
        return f"{prefix}{oid[:2]}/{oid}" if kind in FANOUT_KINDS else f"{prefix}{oid}"

    def seal_object(self, kind: str, payload: bytes, deterministic: bool = False) -> bytes:
        comp = self._zc.compress(payload) if len(payload) > 64 else b""
        body = b"\x01" + comp if comp and len(comp) < len(payload) else b"\x00" + payload
        aad = f"ec2backup:{kind}".encode()
        if deterministic:
            # SIV-style: nonce = keyed hash of the body, so an identical page (same blocks in
            # another volume or run) gets the identical object and name: stored once.
            nonce = crypto.keyed_hash(self.page_nonce_key, body)[: crypto.NONCE_SIZE]
            return self.meta.seal_with_nonce(nonce, body, aad)
        return self.meta.seal(body, aad)

    def open_object(self, kind: str, name: str, data: bytes, aad: str | None = None) -> bytes:
        try:
            body = self.meta.open(data, (aad or f"ec2backup:{kind}").encode())
            if body[:1] == b"\x01":
                return zstandard.ZstdDecompressor().decompress(body[1:])
            if body[:1] == b"\x00":
                return body[1:]
            raise ValueError("unknown encoding")
        except (crypto.DecryptionError, zstandard.ZstdError, ValueError) as exc:
            raise CorruptObjectError(f"object {name} is corrupt: {exc}") from exc

    def save_object(self, kind: str, payload: bytes, deterministic: bool = False) -> str:
        return self._save_object(kind, payload, deterministic)[0]

    def _save_object(self, kind: str, payload: bytes, deterministic: bool) -> tuple[str, bool]:
        """(object id, whether it was written)."""
        data = self.seal_object(kind, payload, deterministic)
        oid = crypto.content_hash(data).hex()
        name = self.object_name(kind, oid)
        if deterministic and self.backend.exists(name):
            return oid, False  # the same page is already stored
        # content-named: an object already there under this name holds these very bytes, and
        # is never overwritten (nor a version added on a versioned or Object Lock bucket)
        return oid, self.backend.create(name, data)

    def load_object(self, kind: str, oid: str) -> bytes:
        name = self.object_name(kind, oid)
        data = self.backend.get(name)
        if crypto.content_hash(data).hex() != oid:
            raise CorruptObjectError(f"object {name} is corrupt: content hash does not match name")
        return self.open_object(kind, name, data)

    def list_ids(self, kind: str) -> list[str]:
        return [name.rsplit("/", 1)[1] for name, _ in self.backend.list(KIND_PREFIX[kind])]

    def seal_named(self, name: str, payload: bytes) -> bytes:
        """A mutable encrypted object (locks, checkpoints): the name is the associated data."""
        return self.meta.seal(b"\x00" + payload, name.encode())

    def save_named(self, name: str, payload: bytes) -> None:
        self.backend.put(name, self.seal_named(name, payload))

    def load_named(self, name: str) -> bytes:
        return self.open_object("named", name, self.backend.get(name), aad=name)

    # ---- pages -----------------------------------------------------------------------------

    def save_page(self, page: bytes | bytearray) -> tuple[str, bool]:
        """(page id, whether it was written): equal pages have equal ids (stored once)."""
        return self._save_object("map", bytes(page), deterministic=True)

    def load_page(self, oid: str) -> bytes:
        page = self.load_object("map", oid)
        if len(page) != PAGE_BYTES:
            raise CorruptObjectError(f"object {self.object_name('map', oid)} is corrupt: size")
        return page

    # ---- index -----------------------------------------------------------------------------

    def load_index_table(self, oid: str) -> IndexTable:
        """One index file, either encoding (JSON or binary table)."""
        raw = self.load_object("index", oid)
        if raw[: len(INDEX_MAGIC)] == INDEX_MAGIC:
            try:
                return IndexTable.decode(raw)
            except ValueError as exc:
                raise CorruptObjectError(f"object index/{oid} is corrupt: {exc}") from exc
        return IndexTable.from_file(self._parse_index_json(oid, raw))

    def load_index_file(self, oid: str) -> IndexFile:
        """One index file as a document (tests, debugging: materializes every entry)."""
        raw = self.load_object("index", oid)
        if raw[: len(INDEX_MAGIC)] == INDEX_MAGIC:
            try:
                return IndexTable.decode(raw).to_file()
            except ValueError as exc:
                raise CorruptObjectError(f"object index/{oid} is corrupt: {exc}") from exc
        return self._parse_index_json(oid, raw)

    @staticmethod
    def _parse_index_json(oid: str, raw: bytes) -> IndexFile:
        try:
            return IndexFile.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptObjectError(f"object index/{oid} is corrupt: bad JSON") from exc

    def iter_index_tables(
        self,
        ids: Iterable[str] | None = None,
        on_error: Callable[[str, UserError], None] | None = None,
    ) -> Iterator[tuple[str, IndexTable]]:
        """(id, table) of every index file, in listing order, a bounded window fetched ahead.
        A file that cannot be read raises, or goes to `on_error` and is left out."""
        pending = iter(self.list_ids("index") if ids is None else ids)
        window: collections.deque[tuple[str, Future[IndexTable]]] = collections.deque()
        with ThreadPoolExecutor(max_workers=INDEX_FETCH_WINDOW) as pool:

            def submit() -> None:
                oid = next(pending, None)
                if oid is not None:
                    window.append((oid, pool.submit(self.load_index_table, oid)))

            for _ in range(INDEX_FETCH_WINDOW):
                submit()
            while window:
                oid, fut = window.popleft()
                submit()
                try:
                    table = fut.result()
                except UserError as exc:
                    if on_error is None:
                        for _oid, rest in window:
                            rest.cancel()
                        raise
                    on_error(oid, exc)
                    continue
                yield oid, table

    def load_index(self, refresh: bool = False) -> Index:
        if self._index is not None and not refresh:
            return self._index
        # An index handed out before stays valid for its holder (its scratch file goes with it).
        self._index = Index.build(self.iter_index_tables())
        self._marked = None  # loaded again when a blob is in no index
        return self._index

    def refresh_index(self) -> Index:
        """The index loaded before, brought up to date for a holder of a lock that reuses this
        object (the worker agent, one range after another): index files written since are
        added; if a file loaded before is gone, a prune or repair rewrote the index while no
        lock was held, and everything is loaded again (a blob it dropped must not be taken
        for stored). Call it with the lock held, so no prune can run until the lock goes."""
        if self._index is None:
            return self.load_index()
        listed = self.list_ids("index")
        loaded = set(self._index.files)
        if loaded - set(listed):
            return self.load_index(refresh=True)
        for oid, table in self.iter_index_tables([i for i in listed if i not in loaded]):
            self._index.add_table(oid, table)
        return self._index

    def marked_index(self, refresh: bool = False) -> Index:
        """The index entries of packs a prune marked for deletion (see marks.py)."""
        from ec2backup.repository.marks import list_marks

        if self._marked is None or refresh:
            self._marked = Index.build((m.name, m.table) for m in list_marks(self))
        return self._marked

    def locate(self, blob_id: bytes) -> BlobLoc | None:
        """Where a blob is: the index, else a pack marked for deletion but not deleted yet (a
        restore point written by a holder that lost its lock may reference one; the next prune
        puts the pack back into the index)."""
        loc = self.load_index().blobs.get(blob_id)
        if loc is None:
            loc = self.marked_index().blobs.get(blob_id)
        return loc

    def pack_size(self, pack_id: str) -> int:
        """A pack's size from the index, or from the marks."""
        index = self.load_index()
        return (index if pack_id in index.packs else self.marked_index()).pack_size(pack_id)

    def save_index(self, packs: list[IndexPack], supersedes: list[str] | None = None) -> str:
        table = IndexTable.from_packs(packs, supersedes or [])
        if self.binary_index:
            payload = table.encode()
        else:
            payload = IndexFile(packs=packs, supersedes=supersedes or []).model_dump_json().encode()
        oid = self.save_object("index", payload)
        if self._index is not None:
            self._index.add_table(oid, table)
        return oid

    # ---- restore points --------------------------------------------------------------------

    def check_locks(self) -> None:
        """Raise LockLost if a lock this process took on the repository is no longer held."""
        for lock in list(self.held_locks):
            lock.check()

    def save_restore_point(self, rp: RestorePoint) -> str:
        self.check_locks()  # a holder that lost its lock may have had its data pruned
        return self.save_object("restorepoint", rp.model_dump_json().encode())

    def load_restore_point_by_id(self, oid: str) -> RestorePoint:
        raw = self.load_object("restorepoint", oid)
        try:
            return RestorePoint.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptObjectError(f"object restorepoints/{oid} is corrupt: bad JSON") from exc

    def resolve_restore_point(self, prefix: str) -> str:
        prefix = prefix.strip().lower()
        if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
            raise UserError(
                f"bad restore point id {prefix!r}: give at least {MIN_PREFIX} hex digits"
            )
        matches = [i for i in self.list_ids("restorepoint") if i.startswith(prefix)]
        if not matches:
            raise NotFoundError(f"restore point {prefix} not found")
        if len(matches) > 1:
            raise UserError(f"restore point id {prefix} is ambiguous ({len(matches)} matches)")
        return matches[0]

    def load_restore_point(self, prefix: str) -> tuple[str, RestorePoint]:
        oid = self.resolve_restore_point(prefix)
        rp = self.load_restore_point_by_id(oid)
        self._apply_resolutions([(oid, rp)])
        return oid, rp

    def list_restore_points(self) -> list[tuple[str, RestorePoint]]:
        ids = self.list_ids("restorepoint")
        with ThreadPoolExecutor(max_workers=8) as pool:
            rps = list(pool.map(self.load_restore_point_by_id, ids))
        out = list(zip(ids, rps, strict=True))
        out.sort(key=lambda x: x[1].time)
        self._apply_resolutions(out)
        return out

    # ---- anomaly resolutions (repository-format.md §5.7) --------------------------------------

    def _apply_resolutions(self, points: list[tuple[str, RestorePoint]]) -> None:
        flagged = {oid: rp for oid, rp in points if rp.anomaly and rp.anomaly.verdict == "anomaly"}
        if not flagged:
            return
        for name, _ in self.backend.list(RESOLUTIONS_PREFIX):
            oid = name.rsplit("/", 1)[1]
            rp = flagged.get(oid)
            if rp is not None and rp.anomaly is not None:
                rp.anomaly.resolved = self.load_resolution(oid)

    def load_resolution(self, oid: str) -> Resolution:
        name = RESOLUTIONS_PREFIX + oid
        raw = self.load_named(name)
        try:
            return Resolution.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptObjectError(f"object {name} is corrupt: bad JSON") from exc

    def resolve_anomaly(self, prefix: str, reason: str) -> tuple[str, Resolution]:
        """Record that the restore point's anomaly was not an attack (the restore point itself
        never changes); an already resolved one keeps its first resolution."""
        oid, rp = self.load_restore_point(prefix)
        if rp.anomaly is None or rp.anomaly.verdict != "anomaly":
            raise UserError(f"restore point {oid[:12]}: no anomaly to resolve")
        if rp.anomaly.resolved is not None:
            return oid, rp.anomaly.resolved
        resolution = Resolution(reason=reason)
        self.save_named(RESOLUTIONS_PREFIX + oid, resolution.model_dump_json().encode())
        return oid, resolution

    def forget(self, prefix: str) -> str:
        oid = self.resolve_restore_point(prefix)
        self.backend.delete(self.object_name("restorepoint", oid))
        # Its resolution, if any, goes with it (nothing else reads it).
        if any(True for _ in self.backend.list(RESOLUTIONS_PREFIX + oid)):
            self.backend.delete(RESOLUTIONS_PREFIX + oid)
        return oid

    # ---- packs -----------------------------------------------------------------------------

    def list_packs(self) -> dict[str, int]:
        return {name.rsplit("/", 1)[1]: size for name, size in self.backend.list("data/")}

    # ---- locks -----------------------------------------------------------------------------

    def lock(self, exclusive: bool, purpose: str, wait: float = 0.0) -> Lock:
        from ec2backup.repository.locks import Lock

        return Lock.acquire(self, exclusive=exclusive, purpose=purpose, wait=wait)


def _save_key_file(backend: Backend, kf: keys.KeyFile) -> str:
    data = kf.model_dump_json(indent=2).encode()
    kid = crypto.content_hash(data).hex()
    backend.create(f"keys/{kid}", data)
    return kid


def list_key_files(
    backend: Backend, damaged: dict[str, str] | None = None
) -> dict[str, keys.KeyFile]:
    """The key files that parse and validate; the others (planted or damaged) go to `damaged`
    (id -> what is wrong): other wrappings may still open the repository."""
    out: dict[str, keys.KeyFile] = {}
    for name, _ in backend.list("keys/"):
        kid = name.rsplit("/", 1)[1]
        try:
            out[kid] = keys.KeyFile.model_validate_json(backend.get(name))
        except (ValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
            if damaged is not None:
                damaged[kid] = keys.damage(exc)
    return out


def iter_chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
