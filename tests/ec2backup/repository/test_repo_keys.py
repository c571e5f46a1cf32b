"""Passwords, KMS wrappings, key rotation; wrong password / missing KMS access fail cleanly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import PASSWORD, list_objects, make_bucket, run_inproc, run_sub
from repo_imagegen import make_image, sha256_file

from ec2backup import crypto, keys


def test_crypto_primitives() -> None:
    k = crypto.random_key()
    ct = crypto.seal(k, b"hello", b"aad")
    assert crypto.open_sealed(k, ct, b"aad") == b"hello"
    for bad_key, bad_aad, bad_ct in [
        (crypto.random_key(), b"aad", ct),
        (k, b"other", ct),
        (k, b"aad", ct[:-1] + bytes([ct[-1] ^ 1])),
    ]:
        with pytest.raises(crypto.DecryptionError):
            crypto.open_sealed(bad_key, bad_ct, bad_aad)
    assert crypto.keyed_hash(k, b"x") != crypto.keyed_hash(crypto.random_key(), b"x")
    assert crypto.derive_key(k, "a") != crypto.derive_key(k, "b")


def test_password_wrap_is_bound_to_repository() -> None:
    master = crypto.random_key()
    kf = keys.wrap_with_password(master, b"pw", "repo-a")
    assert keys.unwrap(kf, "repo-a", b"pw") == master
    with pytest.raises(keys.KeyUnwrapError, match="wrong password"):
        keys.unwrap(kf, "repo-a", b"nope")
    with pytest.raises(keys.KeyUnwrapError):
        keys.unwrap(kf, "repo-b", b"pw")  # a key file copied from another repository


def test_wrong_or_missing_password(init_repo: str, tmp_path: Path) -> None:
    img = tmp_path / "img"
    make_image(img, 2, seed=1)
    before = list_objects(init_repo)
    os.environ["EC2BACKUP_REPO_PASSWORD"] = "wrong"
    res = run_sub("image", "backup", img, "--repo", init_repo)
    assert res.code != 0
    assert res.err.strip().count("\n") == 0 and "wrong password" in res.err, res.err
    assert res.out == ""
    del os.environ["EC2BACKUP_REPO_PASSWORD"]
    res = run_inproc("repo", "ls", "--repo", init_repo)
    assert res.code != 0 and "no password given" in res.err
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    res = run_inproc("repo", "ls", "--repo", init_repo, "--password-file", pwfile)
    assert res.code == 0, res.err
    assert list_objects(init_repo) == before  # nothing was written by the failed attempts


def test_key_rotation(init_repo: str, tmp_path: Path) -> None:
    """Add a second password, remove the first: data stays readable, old password fails."""
    img = tmp_path / "img"
    digest = make_image(img, 3, seed=4)
    rp = run_inproc("image", "backup", img, "--repo", init_repo).last_line
    data_before = {n: s for n, s in list_objects(init_repo).items() if n.startswith("data/")}
    os.environ["EC2BACKUP_NEW_REPO_PASSWORD"] = "new secret"
    try:
        added = run_inproc("repo", "key", "add", "--repo", init_repo)
    finally:
        del os.environ["EC2BACKUP_NEW_REPO_PASSWORD"]
    assert added.code == 0, added.err
    new_id = added.last_line
    listed = run_inproc("repo", "key", "list", "--repo", init_repo, "--json")
    import json

    rows = json.loads(listed.out)
    assert len(rows) == 2 and sum(r["current"] for r in rows) == 1
    old_id = next(r["id"] for r in rows if r["id"] != new_id)
    # cannot remove the key in use; with the new password we can remove the old one
    assert run_inproc("repo", "key", "remove", old_id[:8], "--repo", init_repo).code != 0
    os.environ["EC2BACKUP_REPO_PASSWORD"] = "new secret"
    assert run_inproc("repo", "key", "remove", old_id[:8], "--repo", init_repo).code == 0
    out = tmp_path / "out"
    assert run_inproc("image", "restore", rp, "--repo", init_repo, "-o", out).code == 0
    assert sha256_file(out) == digest
    os.environ["EC2BACKUP_REPO_PASSWORD"] = PASSWORD
    res = run_inproc("repo", "ls", "--repo", init_repo)
    assert res.code != 0 and "wrong password" in res.err
    after = {n: s for n, s in list_objects(init_repo).items() if n.startswith("data/")}
    assert after == data_before  # no data rewritten


@pytest.fixture
def kms_key(lab_aws, aws_env) -> str:  # type: ignore[no-untyped-def]
    return str(lab_aws.client("kms").create_key()["KeyMetadata"]["KeyId"])


def test_kms_repository(lab_aws, aws_env, kms_key: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A KMS-only repository opens with no password; losing KMS access is a one-line error."""
    url = f"s3://{make_bucket(lab_aws)}/kms"
    os.environ.pop("EC2BACKUP_REPO_PASSWORD")
    assert run_inproc("repo", "init", "--repo", url, "--kms-key-id", kms_key).code == 0
    img = tmp_path / "img"
    digest = make_image(img, 3, seed=6)
    res = run_inproc("image", "backup", img, "--repo", url)
    assert res.code == 0, res.err
    out = tmp_path / "out"
    assert run_inproc("image", "restore", res.last_line, "--repo", url, "-o", out).code == 0
    assert sha256_file(out) == digest
    before = list_objects(url)
    # the same key id looked up in another Region does not exist: no KMS access
    env = {**aws_env, "AWS_DEFAULT_REGION": "eu-west-1"}
    env.pop("EC2BACKUP_REPO_PASSWORD", None)
    bad = run_sub("image", "backup", img, "--repo", url, env=env)
    assert bad.code != 0 and bad.err.startswith("error: cannot open repository"), bad.err
    assert bad.err.strip().count("\n") == 0 and "KMS key" in bad.err
    # (moto's KMS decrypts with disabled keys, so the disabled-key case is not testable here)
    assert list_objects(url) == before


def test_kms_wrapping_added_to_password_repo(
    init_repo: str, lab_aws, aws_env, kms_key: str
) -> None:  # type: ignore[no-untyped-def]
    assert run_inproc("repo", "key", "add", "--kms-key-id", kms_key, "--repo", init_repo).code == 0
    os.environ.pop("EC2BACKUP_REPO_PASSWORD")
    res = run_inproc("repo", "key", "list", "--repo", init_repo)
    assert res.code == 0, res.err
    assert "kms" in res.out and "password" in res.out


def test_bad_kms_key_at_init_writes_nothing(repo_url: str, lab_aws, aws_env) -> None:  # type: ignore[no-untyped-def]
    other = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"
    for key in ("00000000-1111-2222-3333-444444444444", other):
        res = run_inproc("repo", "init", "--repo", repo_url, "--kms-key-id", key)
        assert res.code != 0 and res.err.startswith("error: cannot use KMS key"), res.err
        assert list_objects(repo_url) == {}


def test_bad_urls_and_double_init(init_repo: str) -> None:
    res = run_inproc("repo", "init", "--repo", init_repo)
    assert res.code != 0 and "already exists" in res.err
    assert run_inproc("repo", "ls", "--repo", "ftp://x/y").code == 2
    assert run_inproc("repo", "ls", "--repo", "s3://").code == 2


def _plant(url: str, name: str, text: str) -> None:
    """Put a key file object straight into the repository (as an attacker or a bad disk would)."""
    from ec2backup.repository.backend import open_backend

    open_backend(url).put(f"keys/{name}", text.encode())


def _good_key_file() -> dict[str, object]:
    kf = keys.wrap_with_password(crypto.random_key(), b"other", "some-repo")
    return dict(kf.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("name", "mangle", "why"),
    [
        ("huge-n", lambda kf: {**kf, "scrypt": {**kf["scrypt"], "n": 2**40}}, "scrypt: n="),
        ("bad-base64", lambda kf: {**kf, "data": "not base64!!"}, "not valid base64"),
        ("no-params", lambda kf: {**kf, "scrypt": None}, "without scrypt parameters"),
        ("bad-salt", lambda kf: {**kf, "scrypt": {**kf["scrypt"], "salt": "%%"}}, "salt"),
        ("not-json", None, "Invalid JSON"),
    ],
)
def test_damaged_key_files_are_skipped_and_named(
    init_repo: str, name: str, mangle: Any, why: str
) -> None:
    """A planted or damaged key file never stops the repository from opening with a good one
    (nor makes it hang on absurd scrypt parameters); when it is the only one left, the error is
    one line naming it and what is wrong."""
    import json
    import time

    from ec2backup.repository.backend import open_backend
    from ec2backup.repository.repo import Repository

    text = "{not json" if mangle is None else json.dumps(mangle(_good_key_file()))
    _plant(init_repo, f"planted-{name}", text)
    t0 = time.monotonic()
    repo = Repository.open(init_repo, PASSWORD.encode())
    assert time.monotonic() - t0 < 10
    assert repo.key_id != f"planted-{name}"
    # The good key file gone: only the planted one is left.
    backend = open_backend(init_repo)
    for key_name, _ in list(backend.list("keys/")):
        if not key_name.endswith(f"planted-{name}"):
            backend.delete(key_name)
    res = run_inproc("repo", "ls", "--repo", init_repo)
    assert res.code != 0
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert f"keys/planted-{name}"[:17] in lines[0] and why in lines[0], lines[0]
    assert "Traceback" not in res.err


@pytest.mark.parametrize(
    "change",
    [
        {"data_storage_class": "GLACIER"},  # every new pack to Glacier
        {"pack_size": 1024},
        {"compression_level": 19},
        {"version": 2},
        {"mac": ""},  # the code stripped
    ],
)
def test_a_modified_config_is_refused_and_nothing_is_written(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    """The plaintext `config` is authenticated by a key derived from the master key: a change
    made without that key (anyone with write access to the bucket) fails every open with one
    line, before anything is written."""
    import json

    from ec2backup.repository.repo import CONFIG_NAME, Repository

    url = str(tmp_path / "repo")
    assert run_inproc("repo", "init", "--repo", url).code == 0
    image = tmp_path / "img"
    make_image(image, 2, seed=3)
    assert run_inproc("image", "backup", image, "--repo", url).code == 0
    repo = Repository.open(url, PASSWORD.encode())
    doc = json.loads(repo.backend.get(CONFIG_NAME))
    doc.update(change)
    repo.backend.put(CONFIG_NAME, [json.dumps(doc).encode()])
    before = list_objects(url)
    res = run_inproc("image", "backup", image, "--repo", url)
    assert res.code != 0
    assert "config" in res.err and "authentication code" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert list_objects(url) == before


def test_a_config_rewritten_with_the_key_still_opens(tmp_path: Path) -> None:
    """The authentication covers the content, not the bytes: key order and spacing do not
    matter (another implementation may write the JSON differently)."""
    import json

    from ec2backup.repository.repo import CONFIG_NAME, Repository

    url = str(tmp_path / "repo")
    assert run_inproc("repo", "init", "--repo", url).code == 0
    repo = Repository.open(url, PASSWORD.encode())
    doc = json.loads(repo.backend.get(CONFIG_NAME))
    repo.backend.put(CONFIG_NAME, [json.dumps(dict(reversed(list(doc.items())))).encode()])
    assert Repository.open(url, PASSWORD.encode()).config.id == doc["id"]
