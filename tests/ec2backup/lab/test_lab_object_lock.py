"""S3 Object Lock retention in the lab cannot be weakened, as on AWS (ec2backup_lab/s3ext.py,
docs/lab.md): moto let any PutObjectRetention shorten a COMPLIANCE lock, turn it into
GOVERNANCE, or shorten a GOVERNANCE lock without the bypass header."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import client, error_of

DAY = dt.timedelta(days=1)


def held(s3: Any, bucket: str, key: str, version: str) -> tuple[str, dt.datetime]:
    """(mode, retain-until) as HeadObject reports them (what the product reads; moto has no
    GetObjectRetention)."""
    head = s3.head_object(Bucket=bucket, Key=key, VersionId=version)
    return head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]


def test_object_lock_retention_only_strengthens_unless_governance_is_bypassed(lab: Any) -> None:
    s3 = client(lab, "s3")
    bucket = f"ol-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + 10 * DAY

    def put(key: str, mode: str) -> str:
        return str(
            s3.put_object(
                Bucket=bucket, Key=key, Body=b"x", ObjectLockMode=mode,
                ObjectLockRetainUntilDate=until,
            )["VersionId"]
        )  # fmt: skip

    def retain(key: str, version: str, mode: str, when: dt.datetime, **extra: Any) -> None:
        s3.put_object_retention(
            Bucket=bucket, Key=key, VersionId=version,
            Retention={"Mode": mode, "RetainUntilDate": when}, **extra,
        )  # fmt: skip

    def refused(call: Any) -> str:
        with pytest.raises(ClientError) as exc:
            call()
        return error_of(exc.value)[0]

    compliance = put("c", "COMPLIANCE")
    assert refused(lambda: retain("c", compliance, "COMPLIANCE", until - 5 * DAY)) == (
        "AccessDenied"
    )
    assert refused(lambda: retain("c", compliance, "GOVERNANCE", until + 5 * DAY)) == (
        "AccessDenied"
    )
    assert refused(
        lambda: retain("c", compliance, "COMPLIANCE", until - DAY, BypassGovernanceRetention=True)
    ) == "AccessDenied"  # fmt: skip
    retain("c", compliance, "COMPLIANCE", until + 5 * DAY)  # extending is always allowed
    assert held(s3, bucket, "c", compliance) == ("COMPLIANCE", until + 5 * DAY)

    governance = put("g", "GOVERNANCE")
    assert refused(lambda: retain("g", governance, "GOVERNANCE", until - 5 * DAY)) == (
        "AccessDenied"
    )
    retain("g", governance, "GOVERNANCE", until - 5 * DAY, BypassGovernanceRetention=True)
    retain("g", governance, "COMPLIANCE", until)  # governance -> compliance strengthens
    assert held(s3, bucket, "g", governance) == ("COMPLIANCE", until)
