"""Key files: one random master key, wrapped by a password (scrypt) and/or an AWS KMS key.

A repository may hold several key files that all wrap the *same* master key, so a password can
be rotated or a KMS wrapping added without re-encrypting any data. The wrapped key is bound to
the repository id (associated data / KMS encryption context), so a key file copied from another
repository does not open this one.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from ec2backup import crypto
from ec2backup.errors import UserError, short_error

KEY_FILE_VERSION = 1
SALT_SIZE = 16  # 128-bit salt: unique per key file, as scrypt recommends


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def damage(exc: Exception) -> str:
    """One line saying what is wrong with a key file that does not parse or validate."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return short_error(exc)


# Bounds on a key file's scrypt parameters. Key files are plaintext: a planted one with N = 2^40
# would make every open try to allocate terabytes, or spin for hours. Ours use N = 2^15, r = 8;
# the bounds leave room for stronger settings while keeping one unwrap under SCRYPT_MAXMEM.
SCRYPT_N_RANGE = (2**14, 2**20)
SCRYPT_R_RANGE = (1, 16)
SCRYPT_P_RANGE = (1, 4)


class ScryptParams(BaseModel):
    n: int = crypto.SCRYPT_N
    r: int = crypto.SCRYPT_R
    p: int = crypto.SCRYPT_P
    salt: str  # base64

    @model_validator(mode="after")
    def _bounded(self) -> ScryptParams:
        low, high = SCRYPT_N_RANGE
        if not low <= self.n <= high:
            raise ValueError(f"n={self.n} is outside [2^14, 2^20]")
        if self.n & (self.n - 1):
            raise ValueError(f"n={self.n} is not a power of two")
        if not SCRYPT_R_RANGE[0] <= self.r <= SCRYPT_R_RANGE[1]:
            raise ValueError(f"r={self.r} is outside {list(SCRYPT_R_RANGE)}")
        if not SCRYPT_P_RANGE[0] <= self.p <= SCRYPT_P_RANGE[1]:
            raise ValueError(f"p={self.p} is outside {list(SCRYPT_P_RANGE)}")
        if 128 * self.n * self.r * self.p > crypto.SCRYPT_MAXMEM:
            raise ValueError(f"n={self.n} r={self.r} p={self.p} needs too much memory")
        if len(_b64(self.salt, "salt")) < SALT_SIZE:
            raise ValueError("salt is shorter than 16 bytes")
        return self


class KeyFile(BaseModel):
    """The JSON stored (in clear) at keys/<id>. `data` is the wrapped master key (base64)."""

    version: int = KEY_FILE_VERSION
    kind: Literal["password", "kms"]
    created: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    hostname: str = Field(default_factory=socket.gethostname)
    username: str = Field(default_factory=lambda: os.environ.get("USER", ""))
    scrypt: ScryptParams | None = None
    kms_key_id: str | None = None
    data: str

    @model_validator(mode="after")
    def _complete(self) -> KeyFile:
        if self.kind == "password" and self.scrypt is None:
            raise ValueError("a password key file without scrypt parameters")
        if self.kind == "kms" and not self.kms_key_id:
            raise ValueError("a KMS key file without a key id")
        if not _b64(self.data, "data"):
            raise ValueError("empty wrapped key")
        return self


def _b64(text: str, what: str) -> bytes:
    try:
        return b64d(text)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError(f"{what} is not valid base64") from exc


class KeyUnwrapError(Exception):
    """This key file cannot be opened with what we were given (reason in the message)."""


def _aad(repo_id: str) -> bytes:
    return f"ec2backup key file for repository {repo_id}".encode()


def wrap_with_password(master: bytes, password: bytes, repo_id: str) -> KeyFile:
    salt = os.urandom(SALT_SIZE)
    params = ScryptParams(salt=b64e(salt))
    kek = crypto.password_kek(password, salt, params.n, params.r, params.p)
    return KeyFile(
        kind="password", scrypt=params, data=b64e(crypto.seal(kek, master, _aad(repo_id)))
    )


def kms_client(key_id: str) -> Any:
    """A KMS client in the key's Region (from its ARN), honouring AWS_ENDPOINT_URL."""
    import boto3
    from botocore.config import Config

    region = None
    if key_id.startswith("arn:"):
        parts = key_id.split(":")
        if len(parts) > 3 and parts[3]:
            region = parts[3]
    return boto3.client("kms", region_name=region, config=Config(retries={"mode": "standard"}))


def _kms_context(repo_id: str) -> dict[str, str]:
    return {"ec2backup-repository": repo_id}


def wrap_with_kms(master: bytes, key_id: str, repo_id: str) -> KeyFile:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = kms_client(key_id).encrypt(
            KeyId=key_id, Plaintext=master, EncryptionContext=_kms_context(repo_id)
        )
    except (ClientError, BotoCoreError) as exc:
        raise UserError(f"cannot use KMS key {key_id}: {short_error(exc)}") from exc
    return KeyFile(kind="kms", kms_key_id=key_id, data=b64e(resp["CiphertextBlob"]))


def unwrap(key_file: KeyFile, repo_id: str, password: bytes | None) -> bytes:
    """The master key, or KeyUnwrapError saying why not."""
    if key_file.kind == "password":
        if password is None:
            raise KeyUnwrapError("no password given")
        assert key_file.scrypt is not None
        sp = key_file.scrypt
        kek = crypto.password_kek(password, b64d(sp.salt), sp.n, sp.r, sp.p)
        try:
            master = crypto.open_sealed(kek, b64d(key_file.data), _aad(repo_id))
        except crypto.DecryptionError as exc:
            raise KeyUnwrapError("wrong password") from exc
    else:
        from botocore.exceptions import BotoCoreError, ClientError

        assert key_file.kms_key_id is not None
        try:
            resp = kms_client(key_file.kms_key_id).decrypt(
                CiphertextBlob=b64d(key_file.data),
                KeyId=key_file.kms_key_id,
                EncryptionContext=_kms_context(repo_id),
            )
        except (ClientError, BotoCoreError) as exc:
            raise KeyUnwrapError(f"KMS key {key_file.kms_key_id}: {short_error(exc)}") from exc
        master = bytes(resp["Plaintext"])
    if len(master) != crypto.KEY_SIZE:
        raise KeyUnwrapError("unwrapped key has the wrong length")
    return master
