"""CopySnapshot's concurrency limit, as AWS: at most `copy_snapshot_concurrency` (20 by
default) copies in progress per destination Region and account; the next one answers
ResourceLimitExceeded until one completes. moto copies without limit (a product that never
paces its copies passes there and fails on AWS with a policy of many instances)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import (
    REGION,
    client,
    control_get,
    control_post,
    error_of,
    metrics,
    seed,
    snapshot,
)

DESTINATION = "us-west-2"


@pytest.fixture
def slow_copies(lab: Any) -> Iterator[None]:
    """Two copies at once, each pending 3 s; the lab's settings come back afterwards."""
    saved = control_get(lab, "config")
    control_post(lab, "config", {"copy_snapshot_concurrency": 2, "snapshot_pending_seconds": 3})
    yield
    control_post(
        lab,
        "config",
        {k: saved[k] for k in ("copy_snapshot_concurrency", "snapshot_pending_seconds")},
    )


def test_default_limit_is_awss() -> None:
    from ec2backup_lab.runtime import DEFAULT_COPY_SNAPSHOT_CONCURRENCY

    assert DEFAULT_COPY_SNAPSHOT_CONCURRENCY == 20


def test_a_copy_past_the_limit_is_refused_until_one_completes(lab: Any, slow_copies: None) -> None:
    volume = seed(lab, volumes=1, fill=0.01, seed_value=77)["instances"][0]["volumes"][0]
    source = snapshot(client(lab, "ec2"), volume["volume_id"])
    dst = client(lab, "ec2", region=DESTINATION)
    control_post(lab, "metrics", {"reset": True})

    def copy() -> str:
        return str(dst.copy_snapshot(SourceSnapshotId=source, SourceRegion=REGION)["SnapshotId"])

    first = [copy(), copy()]
    with pytest.raises(ClientError) as refused:
        copy()
    code, status = error_of(refused.value)
    assert code == "ResourceLimitExceeded" and status == 400, (code, status)
    assert "2 concurrent snapshot copies" in str(refused.value)
    # Copies to another Region do not count against this one's.
    client(lab, "ec2", region="eu-west-1").copy_snapshot(
        SourceSnapshotId=source, SourceRegion=REGION
    )
    dst.get_waiter("snapshot_completed").wait(
        SnapshotIds=first, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    copy()  # a slot is free again
    peak = metrics(lab)["copies_in_progress_peak"]
    assert max(v for k, v in peak.items() if k.endswith(f"/{DESTINATION}")) == 2, peak
