"""Authenticated encryption and key derivation shared by the repository and the tag codec.

Primitives (chosen from measurements in research/performance-facts.md):
- AES-256-GCM (hardware AES, ~8 GB/s per core) with a fresh random 96-bit nonce per message;
- BLAKE3 in keyed mode for blob ids (~5 GB/s per core, 3x SHA-256 with SHA-NI), and in
  derive-key mode to split one master key into independent subkeys;
- scrypt to turn a password into a key-encryption key (memory-hard, in the standard library).
"""

from __future__ import annotations

import hashlib
import os

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32  # AES-256 and BLAKE3 keys are both 256 bits
NONCE_SIZE = 12  # GCM's native nonce size; random 96-bit nonces are safe for < 2^32 messages/key
TAG_SIZE = 16  # full-length GCM tag, never truncated
OVERHEAD = NONCE_SIZE + TAG_SIZE  # bytes added by seal()

# scrypt cost: N=2^15, r=8 takes ~0.1 s and 32 MiB here; the interactive setting of the scrypt
# paper. Stored in each key file so it can be raised later without breaking old files.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 256 * 1024 * 1024  # hashlib's default (32 MiB) is exactly too small for N=2^15


class DecryptionError(Exception):
    """Ciphertext failed authentication: wrong key, wrong associated data, or tampering."""


def random_key() -> bytes:
    return os.urandom(KEY_SIZE)


def seal(key: bytes, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
    """Encrypt and authenticate: returns nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, bytes(plaintext), aad)


class Sealer:
    """A reusable AES-GCM context for one key (saves the key schedule per message)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_with_nonce(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Deterministic sealing: the caller MUST derive `nonce` from the plaintext with a
        keyed hash (so equal messages give equal ciphertexts and distinct ones distinct nonces)."""
        assert len(nonce) == NONCE_SIZE
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, data: bytes | memoryview, aad: bytes) -> bytes:
        if len(data) < OVERHEAD:
            raise DecryptionError("ciphertext too short")
        view = memoryview(data)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_SIZE]), bytes(view[NONCE_SIZE:]), aad)
        except InvalidTag as exc:
            raise DecryptionError("authentication failed") from exc


def open_sealed(key: bytes, data: bytes | memoryview, aad: bytes) -> bytes:
    """Inverse of seal(); raises DecryptionError on any mismatch."""
    return Sealer(key).open(data, aad)


def derive_key(master: bytes, context: str) -> bytes:
    """An independent subkey for one purpose (BLAKE3 derive_key mode; context is a fixed label)."""
    return blake3.blake3(master, derive_key_context=context).digest(length=KEY_SIZE)


def keyed_hash(key: bytes, data: bytes | memoryview) -> bytes:
    """BLAKE3 keyed hash (a MAC): equal inputs give equal ids only under the same key."""
    return blake3.blake3(data, key=key).digest()


def content_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Unkeyed BLAKE3 of stored bytes: the name of every encrypted object."""
    return blake3.blake3(data, max_threads=1).digest()


def password_kek(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """Key-encryption key from a password (scrypt)."""
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=KEY_SIZE)
