"""Temporal payload encryption: the codec on every client and worker, and its keys.

Workflow histories and visibility are stored by the Temporal service, readable by whoever
operates the cluster or holds a namespace API key. Our payloads (workflow and activity inputs
and results, signals, queries, heartbeat details, schedule actions, and failure messages and
stack traces) name instance tags, accounts and roles, repository URLs, KMS keys and subnets;
the codec encrypts every one of them before it leaves the process.

Format of an encoded payload (what `temporal workflow show` prints without a codec):

    metadata:
      encoding:            "binary/encrypted"
      encryption-cipher:   "AES256GCM"
      encryption-key-id:   key id (ASCII; public: it names, never reveals, the key)
    data: nonce (12 bytes) || AES-256-GCM(key, serialized original Payload, aad = key id) || tag

The original payload (its own metadata and data) is serialized whole, so decoding gives back
exactly what the pydantic/JSON converter wrote. A payload whose encoding is anything else is
passed through unchanged: JSON typed into `temporal workflow start` or the Web UI is still
accepted, and so are histories written before the codec existed.

Keys (a keyring: id -> 256-bit key, and the current id that encodes):
- Without rotation, one key derived from the installation key (`ec2backup.installation`):
  every process that can read the installation secret has it, nothing else is stored.
- `ec2backup setup --rotate-payload-key` adds a random key to the installation secret and
  makes it current; older keys stay there, so old histories still decode. With
  `[temporal] payload_kms_key` configured, a new key is stored only wrapped by that KMS key
  (`GenerateDataKey`), and unwrapping needs `kms:Decrypt` on it.
- A worker agent never reads the installation secret (it may run in a production account):
  its session secret (`ec2backup.workers.put_secret`) carries the keyring, unwrapped, for that
  worker's lifetime; the agent reads it at start (`--session-secret`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from ec2backup import crypto
from ec2backup.errors import UserError

ENCODING = b"binary/encrypted"
CIPHER = b"AES256GCM"
META_ENCODING = "encoding"
META_CIPHER = "encryption-cipher"
META_KEY_ID = "encryption-key-id"
# The payload key derived from the installation key (no rotation yet), and its public id.
DERIVED_KEY_CONTEXT = "ec2backup temporal payload key v1"
DERIVED_ID_CONTEXT = "ec2backup temporal payload key id v1"
# A process reloads its keyring this often, so a rotation reaches running orchestrators (they
# keep decoding with every key meanwhile: old keys are never removed).
RELOAD_SECONDS = 15 * 60
# The KMS encryption context of a wrapped payload key (its id): binds the ciphertext to the
# key id, and is what the IAM kit's `PayloadKeys` statement conditions on.
KMS_CONTEXT_KEY = "ec2backup-payload-key"


class PayloadKeyError(UserError):
    """A payload names a key this process does not have, or fails authentication."""


@dataclasses.dataclass(frozen=True)
class Keyring:
    current: str
    keys: dict[str, bytes]

    def export(self) -> dict[str, Any]:
        """The keyring as JSON for a session secret (keys unwrapped: the secret itself is
        encrypted with the installation's session-secret KMS key)."""
        return {
            "current": self.current,
            "keys": {kid: base64.b64encode(k).decode() for kid, k in self.keys.items()},
        }

    @classmethod
    def from_export(cls, doc: dict[str, Any]) -> Keyring:
        try:
            keys = {str(kid): base64.b64decode(v) for kid, v in dict(doc["keys"]).items()}
            current = str(doc["current"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"payload keyring: malformed ({exc})") from exc
        if current not in keys or any(len(k) != crypto.KEY_SIZE for k in keys.values()):
            raise UserError("payload keyring: malformed (current key missing or wrong size)")
        return cls(current, keys)


def derived_key(installation_key: bytes) -> tuple[str, bytes]:
    key = crypto.derive_key(installation_key, DERIVED_KEY_CONTEXT)
    kid = "i-" + crypto.keyed_hash(crypto.derive_key(key, DERIVED_ID_CONTEXT), b"")[:6].hex()
    return kid, key


def keyring_from_secret(doc: dict[str, Any], kms: Any = None) -> Keyring:
    """The keyring the installation secret holds: the derived key, every rotated key
    (`payload_keys`: id -> {"key": b64} or {"wrapped": b64 KMS ciphertext}), and the current
    id (`payload_key`; the derived key's when there was no rotation)."""
    kid0, key0 = derived_key(base64.b64decode(doc["key"]))
    keys = {kid0: key0}
    for kid, entry in dict(doc.get("payload_keys") or {}).items():
        if "key" in entry:
            keys[kid] = base64.b64decode(entry["key"])
        else:
            if kms is None:
                raise UserError(f"payload key {kid} is wrapped by KMS: no KMS client")
            try:
                keys[kid] = kms.decrypt(
                    CiphertextBlob=base64.b64decode(entry["wrapped"]),
                    EncryptionContext={KMS_CONTEXT_KEY: kid},
                )["Plaintext"]
            except Exception as exc:
                raise UserError(
                    f"payload key {kid}: KMS cannot unwrap it ({' '.join(str(exc).split())})"
                ) from exc
    current = str(doc.get("payload_key") or kid0)
    if current not in keys:
        raise UserError(f"installation secret: current payload key {current} is not in it")
    return Keyring(current, keys)


def _installation_keyring() -> Keyring:
    from ec2backup import aws, installation

    doc = installation.installation_secret()
    needs_kms = any("wrapped" in e for e in dict(doc.get("payload_keys") or {}).values())
    kms = aws.client("kms", installation.home_region()) if needs_kms else None
    return keyring_from_secret(doc, kms)


_lock = threading.Lock()
_keyring: Keyring | None = None
_loaded_at = 0.0
_fixed = False


def use_keyring(keyring: Keyring) -> None:
    """Use this keyring in this process from now on (an agent: its session secret's)."""
    global _keyring, _fixed
    with _lock:
        _keyring, _fixed = keyring, True


def keyring(refresh: bool = False) -> Keyring:
    """This process's keyring: the one given to `use_keyring`, else the installation's
    (loaded on first use, reloaded after RELOAD_SECONDS or when `refresh`).

    A reload adds keys (to decode what newer processes encode) but keeps the key this process
    encodes with: the keyring its workers got in their session secrets has that one, and a
    key rotated in meanwhile would be unknown to them."""
    global _keyring, _loaded_at
    with _lock:
        stale = time.monotonic() - _loaded_at > RELOAD_SECONDS
        if _keyring is not None and (_fixed or not (refresh or stale)):
            return _keyring
    loaded = _installation_keyring()
    with _lock:
        if not _fixed:
            if _keyring is not None and _keyring.current in loaded.keys:
                loaded = Keyring(_keyring.current, {**_keyring.keys, **loaded.keys})
            _keyring, _loaded_at = loaded, time.monotonic()
        return _keyring or loaded


def reset() -> None:
    """Forget the cached keyring (tests, and a process that switches installation)."""
    global _keyring, _loaded_at, _fixed
    with _lock:
        _keyring, _loaded_at, _fixed = None, 0.0, False


def encode_payload(ring: Keyring, payload: Payload) -> Payload:
    kid = ring.current
    sealed = crypto.seal(ring.keys[kid], payload.SerializeToString(), kid.encode())
    return Payload(
        metadata={META_ENCODING: ENCODING, META_CIPHER: CIPHER, META_KEY_ID: kid.encode()},
        data=sealed,
    )


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(META_ENCODING) == ENCODING


def decode_payload(ring: Keyring, payload: Payload) -> Payload:
    if not is_encrypted(payload):
        return payload  # plain JSON from the `temporal` CLI / Web UI, or an older history
    cipher = payload.metadata.get(META_CIPHER, CIPHER)
    if cipher != CIPHER:
        raise PayloadKeyError(f"payload cipher {cipher.decode(errors='replace')} not supported")
    kid = payload.metadata.get(META_KEY_ID, b"").decode()
    key = ring.keys.get(kid)
    if key is None:
        raise PayloadKeyError(f"payload key {kid!r} unknown to this process")
    try:
        plain = crypto.open_sealed(key, payload.data, kid.encode())
    except crypto.DecryptionError as exc:
        raise PayloadKeyError(f"payload with key {kid!r}: {exc}") from exc
    out = Payload()
    out.ParseFromString(plain)
    return out


def _unknown_key(ring: Keyring, payloads: Sequence[Payload]) -> bool:
    return any(
        is_encrypted(p) and p.metadata.get(META_KEY_ID, b"").decode() not in ring.keys
        for p in payloads
    )


def encode_all(payloads: Sequence[Payload]) -> list[Payload]:
    ring = keyring()
    return [encode_payload(ring, p) for p in payloads]


def decode_all(payloads: Sequence[Payload]) -> list[Payload]:
    ring = keyring()
    if _unknown_key(ring, payloads):
        ring = keyring(refresh=True)  # rotated since we loaded it
    return [decode_payload(ring, p) for p in payloads]


class EncryptionCodec(PayloadCodec):
    """The SDK codec: AES-256-GCM with the process's keyring (module doc). The first use
    loads the keyring (an AWS call) in a thread, off the event loop."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not payloads:
            return []
        if _needs_load():
            return await asyncio.to_thread(encode_all, payloads)
        return encode_all(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not any(is_encrypted(p) for p in payloads):
            return list(payloads)
        if _needs_load():
            return await asyncio.to_thread(decode_all, payloads)
        return decode_all(payloads)


def _needs_load() -> bool:
    with _lock:
        if _keyring is None:
            return True
        return not _fixed and time.monotonic() - _loaded_at > RELOAD_SECONDS


def data_converter() -> DataConverter:
    """pydantic payloads, encrypted; failure messages and stack traces moved into an
    encrypted payload too (errors quote role ARNs, bucket names, AWS messages)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# ---- rotation (ec2backup setup --rotate-payload-key) -------------------------------------------
def rotate(kms_key_id: str | None) -> str:
    """Add a new random payload key to the installation secret and make it current; returns
    its id. With `kms_key_id`, the key is stored only wrapped by that KMS key."""
    from ec2backup import aws, installation

    region = installation.home_region()
    doc = installation.installation_secret()
    kid = "r-" + crypto.random_key()[:6].hex()
    entry: dict[str, str]
    if kms_key_id:
        data_key = aws.client("kms", region).generate_data_key(KeyId=kms_key_id, KeySpec="AES_256")
        entry = {"wrapped": base64.b64encode(data_key["CiphertextBlob"]).decode()}
    else:
        entry = {"key": base64.b64encode(crypto.random_key()).decode()}
    doc.setdefault("payload_keys", {})[kid] = entry
    doc["payload_key"] = kid
    installation.write_installation_secret(doc)
    reset()
    return kid


def describe(ring: Keyring) -> str:
    return json.dumps({"current": ring.current, "keys": sorted(ring.keys)})
