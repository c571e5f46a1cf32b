"""The payload codec and its keyring (ec2backup.payloads): pure, plus KMS wrapping against the
lab endpoint."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from ec2backup import crypto, payloads
from ec2backup.errors import UserError

SECRET_TEXT = "arn:aws:iam::222222222222:role/ec2backup"


@pytest.fixture
def ring() -> Iterator[payloads.Keyring]:
    keys = {"a": crypto.random_key(), "b": crypto.random_key()}
    ring = payloads.Keyring("b", keys)
    payloads.use_keyring(ring)
    yield ring
    payloads.reset()


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


def test_round_trip_hides_the_data_and_restores_it_exactly(ring: payloads.Keyring) -> None:
    original = plain(SECRET_TEXT)
    (encoded,) = asyncio.run(payloads.EncryptionCodec().encode([original]))
    assert encoded.metadata["encoding"] == payloads.ENCODING
    assert encoded.metadata["encryption-key-id"] == b"b"
    assert SECRET_TEXT.encode() not in encoded.SerializeToString()
    (decoded,) = asyncio.run(payloads.EncryptionCodec().decode([encoded]))
    assert decoded == original


def test_plain_payloads_pass_through(ring: payloads.Keyring) -> None:
    """What `temporal workflow start --input` and the Web UI send: accepted as is."""
    original = plain("i-0123")
    assert asyncio.run(payloads.EncryptionCodec().decode([original])) == [original]


def test_older_keys_still_decode(ring: payloads.Keyring) -> None:
    old = payloads.encode_payload(payloads.Keyring("a", ring.keys), plain("x"))
    assert payloads.decode_all([old]) == [plain("x")]


def test_unknown_key_tampering_and_a_relabelled_key_id_are_refused(
    ring: payloads.Keyring,
) -> None:
    encoded = payloads.encode_payload(ring, plain("x"))
    unknown = Payload()
    unknown.CopyFrom(encoded)
    unknown.metadata["encryption-key-id"] = b"zz"
    with pytest.raises(payloads.PayloadKeyError, match="unknown"):
        payloads.decode_payload(ring, unknown)
    relabelled = Payload()
    relabelled.CopyFrom(encoded)
    relabelled.metadata["encryption-key-id"] = b"a"  # the key id is authenticated (AAD)
    with pytest.raises(payloads.PayloadKeyError, match="authentication"):
        payloads.decode_payload(payloads.Keyring("a", {"a": ring.keys["b"]}), relabelled)
    tampered = Payload()
    tampered.CopyFrom(encoded)
    tampered.data = encoded.data[:-1] + bytes([encoded.data[-1] ^ 1])
    with pytest.raises(payloads.PayloadKeyError):
        payloads.decode_payload(ring, tampered)


def test_failure_messages_are_encrypted_too(ring: payloads.Keyring) -> None:
    converter = payloads.data_converter()
    failure = Failure()
    error = ApplicationError(f"cannot assume {SECRET_TEXT}", type="AccessDenied")
    asyncio.run(converter.encode_failure(error, failure))
    assert SECRET_TEXT.encode() not in failure.SerializeToString()
    assert failure.application_failure_info.type == "AccessDenied"  # still classifiable
    decoded = asyncio.run(converter.decode_failure(failure))
    assert SECRET_TEXT in str(decoded)


def test_session_secret_export_round_trips(ring: payloads.Keyring) -> None:
    again = payloads.Keyring.from_export(ring.export())
    assert again == ring
    with pytest.raises(UserError, match="malformed"):
        payloads.Keyring.from_export({"current": "c", "keys": ring.export()["keys"]})


def test_installation_secret_keyring_derived_rotated_and_kms_wrapped(lab_aws: Any) -> None:
    installation_key = crypto.random_key()
    doc = {"key": base64.b64encode(installation_key).decode()}
    derived = payloads.keyring_from_secret(doc)
    kid0 = derived.current
    assert kid0 == payloads.derived_key(installation_key)[0]
    assert kid0.startswith("i-") and len(derived.keys) == 1
    # another installation key derives another key and id
    assert payloads.derived_key(crypto.random_key())[0] != kid0

    kms = lab_aws.client("kms")
    key_id = kms.create_key(Description="payload keys")["KeyMetadata"]["KeyId"]
    data_key = kms.generate_data_key(
        KeyId=key_id, KeySpec="AES_256", EncryptionContext={payloads.KMS_CONTEXT_KEY: "r-w"}
    )
    plain_key = crypto.random_key()
    doc["payload_keys"] = {  # type: ignore[assignment]
        "r-p": {"key": base64.b64encode(plain_key).decode()},
        "r-w": {"wrapped": base64.b64encode(data_key["CiphertextBlob"]).decode()},
    }
    doc["payload_key"] = "r-w"
    ring = payloads.keyring_from_secret(doc, kms)
    assert ring.current == "r-w"
    assert ring.keys == {kid0: derived.keys[kid0], "r-p": plain_key, "r-w": data_key["Plaintext"]}
    with pytest.raises(UserError, match="r-w"):
        payloads.keyring_from_secret(doc, None)
