"""Copy a snapshot set to another Region and/or account, re-keyed with the target's KMS key.

Cross-account: the source shares each snapshot with the target account
(`CreateVolumePermission`), then the target copies it (only the copy can carry the target's
key). Snapshots under the AWS managed `aws/ebs` key cannot be shared: that is refused with a
clear message. Copies are tagged like originals (plain tags at creation for idempotency, the
encrypted metadata bound to the copy's own id afterwards).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ec2backup import aws, tagcodec
from ec2backup.errors import UserError
from ec2backup.models.session import ReplicateOutput, ReplicationSpec
from ec2backup.models.snapshots import SnapshotSet

log = logging.getLogger("ec2backup.replication")

# AWS: at most 20 concurrent snapshot copies per destination Region (ResourceLimitExceeded),
# for every session of the account together: a session copies at most its share of them
# (`max_concurrent`, from the CopySnapshot budget, ec2backup.budget).
MAX_CONCURRENT_COPIES = 20
SOURCE_KEY = "ec2backup:source-snapshot"
COPY_POLL_SECONDS = 1.0
# A copy refused for the Region's limit (others' copies hold it: another installation, a
# console user, a share that went out of date) waits for a slot instead of failing the session.
LIMIT_WAIT_SECONDS = 5.0


class ReplicationError(UserError):
    pass


def _find_copy(ec2: Any, source_snapshot_id: str) -> dict[str, Any] | None:
    snaps = ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{SOURCE_KEY}", "Values": [source_snapshot_id]}],
    )["Snapshots"]
    return snaps[0] if snaps else None


def replicate_set(
    *,
    session_id: str,
    snapshot_set: SnapshotSet,
    target: ReplicationSpec,
    installation_key: bytes,
    heartbeat: Callable[[str], None] = lambda _: None,
    max_concurrent: int = MAX_CONCURRENT_COPIES,
) -> ReplicateOutput:
    src_ec2 = aws.client("ec2", snapshot_set.region, snapshot_set.account_role_arn)
    dst_ec2 = aws.client("ec2", target.region, target.account_role_arn)
    target_account = aws.caller_account(target.region, target.account_role_arn)
    cross_account = target_account != snapshot_set.account
    if cross_account:
        for m in snapshot_set.members:
            if m.default_key:
                raise ReplicationError(
                    f"snapshot {m.snapshot_id} of {m.volume_id} is encrypted with the AWS "
                    f"managed key aws/ebs, which cannot be shared with account {target_account}; "
                    "re-encrypt the volume with a customer managed key"
                )
    pending = list(snapshot_set.members)
    copies: dict[str, str] = {}
    in_flight: dict[str, str] = {}  # copy id -> source snapshot id
    limit = max(1, min(max_concurrent, MAX_CONCURRENT_COPIES))
    refused = 0  # copies refused for the Region's limit since the last one started
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            member = pending[0]
            existing = _find_copy(dst_ec2, member.snapshot_id)
            if existing is not None:
                pending.pop(0)
                in_flight[existing["SnapshotId"]] = member.snapshot_id
                continue
            if cross_account:
                src_ec2.modify_snapshot_attribute(
                    SnapshotId=member.snapshot_id,
                    Attribute="createVolumePermission",
                    CreateVolumePermission={"Add": [{"UserId": target_account}]},
                )
            params: dict[str, Any] = {
                "SourceSnapshotId": member.snapshot_id,
                "SourceRegion": snapshot_set.region,
                "Description": f"ec2backup replica of {member.snapshot_id} ({session_id})",
                "TagSpecifications": [
                    {
                        "ResourceType": "snapshot",
                        "Tags": [
                            *tagcodec.plain_tags(snapshot_set.set_id, session_id),
                            {"Key": SOURCE_KEY, "Value": member.snapshot_id},
                        ],
                    }
                ],
            }
            if member.encrypted or target.kms_key_id:
                params["Encrypted"] = True
            if target.kms_key_id:
                params["KmsKeyId"] = target.kms_key_id
            try:
                copy_id = dst_ec2.copy_snapshot(**params)["SnapshotId"]
            except Exception as exc:
                if aws.error_code(exc) != "ResourceLimitExceeded":
                    raise
                refused += 1
                log.info(
                    "copy of %s to %s waits for a slot: %s", member.snapshot_id, target.region, exc
                )
                break  # after the next poll (one of ours may complete), or a pause
            pending.pop(0)
            refused = 0
            log.info("snapshot %s copied to %s (%s)", member.snapshot_id, copy_id, target.region)
            in_flight[copy_id] = member.snapshot_id
        if not in_flight:
            # Every slot of the Region is someone else's: look again in a while.
            heartbeat(
                f"{len(copies)}/{len(snapshot_set.members)} copies completed; "
                f"waiting for a copy slot in {target.region} ({refused} refused)"
            )
            time.sleep(LIMIT_WAIT_SECONDS)
            continue
        states = {
            s["SnapshotId"]: s
            for s in dst_ec2.describe_snapshots(SnapshotIds=list(in_flight))["Snapshots"]
        }
        for copy_id, snap in states.items():
            if snap["State"] == "error":
                raise ReplicationError(f"copy {copy_id} of {in_flight[copy_id]} failed")
            if snap["State"] == "completed":
                source_id = in_flight.pop(copy_id)
                _tag_copy(
                    src_ec2, dst_ec2, source_id, snap, target, target_account, installation_key
                )
                copies[source_id] = copy_id
        heartbeat(f"{len(copies)}/{len(snapshot_set.members)} copies completed")
        if in_flight:
            time.sleep(COPY_POLL_SECONDS)
    ordered = [copies[m.snapshot_id] for m in snapshot_set.members]
    return ReplicateOutput(replica_ids=ordered, region=target.region, account=target_account)


def _tag_copy(
    src_ec2: Any,
    dst_ec2: Any,
    source_id: str,
    copy: dict[str, Any],
    target: ReplicationSpec,
    target_account: str,
    installation_key: bytes,
) -> None:
    if tagcodec.tag_value(copy.get("Tags"), f"{tagcodec.PAYLOAD_PREFIX}0") is not None:
        return
    source = src_ec2.describe_snapshots(SnapshotIds=[source_id])["Snapshots"][0]
    meta = tagcodec.decode(source.get("Tags", []), installation_key, source_id)
    meta = meta.model_copy(
        update={
            "source_snapshot_id": source_id,
            "region": target.region,
            "account": target_account,
            "encrypted": bool(copy.get("Encrypted")),
            "kms_key_id": copy.get("KmsKeyId"),
        }
    )
    dst_ec2.create_tags(
        Resources=[copy["SnapshotId"]],
        Tags=tagcodec.encode(meta, installation_key, copy["SnapshotId"]),
    )
