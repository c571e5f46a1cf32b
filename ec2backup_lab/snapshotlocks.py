"""EBS snapshot locks in the lab: `LockSnapshot`, `UnlockSnapshot`, `DescribeLockedSnapshots`,
and `DeleteSnapshot` refusing a locked snapshot (moto 5.2.5 implements none of them).

AWS semantics (EBS user guide, "Snapshot lock concepts"; EC2 API reference, LockSnapshot):
- Governance mode: locked at once; the lock may be changed (mode, duration, expiry) or removed
  (UnlockSnapshot) at any time by whoever holds the permissions; the snapshot cannot be
  deleted until it is unlocked or the lock expires.
- Compliance mode: an optional cooling-off period (1-72 hours) during which the lock may still
  be changed or removed; after it, the lock cannot be removed, its mode not changed, its
  duration not shortened: only extended.
- Duration: `LockDuration` (1-36,500 days, counted from `LockDurationStartTime`, here the
  lock's creation) or `ExpirationDate`, exactly one.
- A snapshot in state `expired` is unlocked (deletable); DescribeLockedSnapshots still lists it.

AWS does not publish the error codes of these refusals in its error table; the lab answers
`SnapshotLocked` (DeleteSnapshot) and `OperationNotPermitted` (changing a compliance lock), and
the product never depends on a code: it reads DescribeLockedSnapshots before deleting.

The lab's clock for locks is real time plus `lock_clock_offset_seconds` (lab config), so a test
can let a cooling-off period or a lock run out without waiting hours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from ec2backup_lab.runtime import get_runtime

MAX_LOCK_DAYS = 36_500
MAX_COOL_OFF_HOURS = 72


def lab_now() -> datetime:
    offset = get_runtime().lock_clock_offset_seconds
    return datetime.fromtimestamp(time.time() + offset, tz=UTC)


@dataclass
class SnapshotLock:
    owner_id: str
    snapshot_id: str
    mode: str  # governance | compliance
    created: datetime
    duration_start: datetime
    expires: datetime
    duration_days: int | None
    cool_off_hours: int | None
    cool_off_expires: datetime | None

    def state(self, now: datetime) -> str:
        if now >= self.expires:
            return "expired"
        if self.mode == "governance":
            return "governance"
        if self.cool_off_expires is not None and now < self.cool_off_expires:
            return "compliance-cooloff"
        return "compliance"

    def describe(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "OwnerId": self.owner_id,
            "SnapshotId": self.snapshot_id,
            "LockState": self.state(now),
            "LockCreatedOn": self.created,
            "LockDurationStartTime": self.duration_start,
            "LockExpiresOn": self.expires,
        }
        if self.duration_days is not None:
            out["LockDuration"] = self.duration_days
        if self.cool_off_hours is not None:
            out["CoolOffPeriod"] = self.cool_off_hours
            out["CoolOffPeriodExpiresOn"] = self.cool_off_expires
        return out


def _error(code: str, message: str) -> Exception:
    from ec2backup_lab.ec2ext import LabClientError

    return LabClientError(code, message)


def locks_of(backend: Any) -> dict[str, SnapshotLock]:
    locks: dict[str, SnapshotLock] | None = getattr(backend, "lab_snapshot_locks", None)
    if locks is None:
        locks = {}
        backend.lab_snapshot_locks = locks
    return locks


def check_deletable(backend: Any, snapshot_id: str) -> None:
    """DeleteSnapshot's refusal of a snapshot whose lock has not expired."""
    lock = locks_of(backend).get(snapshot_id)
    if lock is None:
        return
    state = lock.state(lab_now())
    if state != "expired":
        raise _error(
            "SnapshotLocked",
            f"The snapshot '{snapshot_id}' is locked in {lock.mode} mode ({state}) until "
            f"{lock.expires.isoformat()} and cannot be deleted.",
        )


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _lock_snapshot(self: ElasticBlockStore) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    mode = self._get_param("LockMode")
    cool_off: int | None = self._get_int_param("CoolOffPeriod")
    duration = self._get_int_param("LockDuration")
    expiration = self._get_param("ExpirationDate")
    self.error_on_dryrun()
    backend = self.ec2_backend
    snapshot = backend.snapshots.get(snapshot_id)
    if snapshot is None:
        raise _error("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
    if mode not in ("governance", "compliance"):
        raise _error("InvalidParameterValue", f"Value ({mode}) for parameter lockMode is invalid.")
    if (duration is None) == (expiration is None):
        raise _error(
            "InvalidParameterCombination", "Specify exactly one of LockDuration and ExpirationDate."
        )
    if duration is not None and not 1 <= duration <= MAX_LOCK_DAYS:
        raise _error(
            "InvalidParameterValue", f"Value ({duration}) for parameter lockDuration is invalid."
        )
    if cool_off is not None:
        if mode != "compliance":
            raise _error(
                "InvalidParameterCombination",
                "A cooling-off period can only be specified in compliance mode.",
            )
        if not 1 <= cool_off <= MAX_COOL_OFF_HOURS:
            raise _error(
                "InvalidParameterValue",
                f"Value ({cool_off}) for parameter coolOffPeriod is invalid.",
            )
    now = lab_now()
    locks = locks_of(backend)
    current = locks.get(snapshot_id)
    start = now if current is None or current.state(now) == "expired" else current.duration_start
    expires = start + timedelta(days=duration) if duration is not None else _parse_time(expiration)
    if expires <= now:
        raise _error("InvalidParameterValue", "The lock expiration date must be in the future.")
    if current is not None and current.state(now) == "compliance":
        # after the cooling-off period: no unlock, no change of mode, no shorter lock
        if mode != "compliance" or expires < current.expires:
            raise _error(
                "OperationNotPermitted",
                f"The snapshot '{snapshot_id}' is locked in compliance mode after its cooling-off "
                "period: its lock can only be extended.",
            )
        cool_off, cool_off_expires = current.cool_off_hours, current.cool_off_expires
        created = current.created
    else:
        cool_off_expires = now + timedelta(hours=cool_off) if cool_off is not None else None
        created = now if current is None or current.state(now) == "expired" else current.created
    lock = SnapshotLock(
        owner_id=backend.account_id,
        snapshot_id=snapshot_id,
        mode=mode,
        created=created,
        duration_start=start,
        expires=expires,
        duration_days=duration,
        cool_off_hours=cool_off,
        cool_off_expires=cool_off_expires,
    )
    locks[snapshot_id] = lock
    out = lock.describe(now)
    out.pop("OwnerId")
    return ActionResult(out)


def _unlock_snapshot(self: ElasticBlockStore) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    self.error_on_dryrun()
    backend = self.ec2_backend
    if snapshot_id not in backend.snapshots:
        raise _error("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
    locks = locks_of(backend)
    lock = locks.get(snapshot_id)
    if lock is None:
        raise _error("InvalidParameterValue", f"The snapshot '{snapshot_id}' is not locked.")
    if lock.state(lab_now()) == "compliance":
        raise _error(
            "OperationNotPermitted",
            f"The snapshot '{snapshot_id}' is locked in compliance mode and its cooling-off "
            "period has expired: it cannot be unlocked.",
        )
    del locks[snapshot_id]
    return ActionResult({"SnapshotId": snapshot_id})


def _describe_locked_snapshots(self: ElasticBlockStore) -> ActionResult:
    snapshot_ids = self._get_param("SnapshotIds", []) or []
    filters = self._filters_from_querystring() or {}
    max_results = self._get_int_param("MaxResults")
    next_token = self._get_param("NextToken")
    self.error_on_dryrun()
    now = lab_now()
    locks = locks_of(self.ec2_backend)
    found = [locks[s] for s in snapshot_ids if s in locks] if snapshot_ids else list(locks.values())
    states = filters.get("lock-state")
    rows = [lock.describe(now) for lock in sorted(found, key=lambda x: x.snapshot_id)]
    if states:
        rows = [r for r in rows if r["LockState"] in states]
    start = int(next_token) if next_token else 0
    result: dict[str, Any] = {}
    page = rows[start:]
    if max_results:
        if len(page) > max_results:
            result["NextToken"] = str(start + max_results)
        page = page[:max_results]
    result["Snapshots"] = page
    return ActionResult(result)


def install() -> None:
    ElasticBlockStore.lock_snapshot = _lock_snapshot  # type: ignore[attr-defined]
    ElasticBlockStore.unlock_snapshot = _unlock_snapshot  # type: ignore[attr-defined]
    ElasticBlockStore.describe_locked_snapshots = _describe_locked_snapshots  # type: ignore[attr-defined]
