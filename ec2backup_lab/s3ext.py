"""S3 in the lab where moto is kinder than AWS: Glacier retrieval that takes time, and Object
Lock retention that cannot be weakened.

**Retention.** moto's `PutObjectRetention` overwrites any retention (moto-audit: a COMPLIANCE
lock shortened or turned into GOVERNANCE, a GOVERNANCE lock shortened without the bypass
header). AWS (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html,
"Retention modes"): while a version's lock holds, COMPLIANCE can be neither shortened nor
changed to another mode by anyone; GOVERNANCE can be shortened, removed or turned into
GOVERNANCE with an earlier date only with `x-amz-bypass-governance-retention: true` (and
s3:BypassGovernanceRetention); extending either, or GOVERNANCE -> COMPLIANCE, is always
allowed. Refusals are `403 AccessDenied`, as AWS answers them.

**Retrieval.**
moto completes `RestoreObject` at once by default, and with its `manual` state transition an
object reads as restored *before* the transition starts (moto-audit, gap 22). The lab fixes the
start (a restore request puts the object in IN_PROGRESS) and uses moto's manual progression:
the restored copy becomes readable only after `s3_restore_reads` further reads (HEAD/GET) of
the object, so a product polling the object's state really waits for several polls.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

# Reads of an object between RestoreObject and its restored copy being readable.
DEFAULT_S3_RESTORE_READS = 3
MODEL = "s3::keyrestore"


def set_restore_reads(reads: int) -> None:
    from moto.moto_api import state_manager

    if reads <= 0:
        state_manager.set_transition(model_name=MODEL, transition={"progression": "immediate"})
    else:
        state_manager.set_transition(
            model_name=MODEL, transition={"progression": "manual", "times": reads}
        )


def _weakens(
    current_mode: str | None, current_until: str | None, mode: str | None, until: str | None
) -> bool:
    """Whether a new retention (mode, until) is weaker than a version's current one."""
    if current_mode not in ("GOVERNANCE", "COMPLIANCE") or not current_until:
        return False
    held = _parse_time(current_until)
    if held <= dt.datetime.now(dt.UTC):
        return False  # the lock has expired: anything goes
    if mode is None or until is None:
        return True  # removal
    if current_mode == "COMPLIANCE" and mode != "COMPLIANCE":
        return True
    return _parse_time(until) < held


def _parse_time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _install_retention_rules() -> None:
    from moto.s3.exceptions import AccessDeniedByLock
    from moto.s3.responses import S3Response

    original = S3Response.put_object_retention
    if getattr(original, "_lab", False):
        return

    def put_object_retention(self: Any) -> Any:
        version_id = self._get_param("versionId")
        key = self.backend.get_object(self.bucket_name, self.parse_key_name(), version_id)
        if key is not None:
            mode, until = self._mode_until_from_body()
            bypass = self.headers.get("x-amz-bypass-governance-retention", "").lower() == "true"
            if _weakens(key.lock_mode, key.lock_until, mode, until) and not (
                key.lock_mode == "GOVERNANCE" and bypass
            ):
                raise AccessDeniedByLock
        return original(self)

    put_object_retention._lab = True  # type: ignore[attr-defined]
    S3Response.put_object_retention = put_object_retention  # type: ignore[method-assign]


def install() -> None:
    from moto.s3.models import FakeKey

    _install_retention_rules()

    original = FakeKey.restore
    if getattr(original, "_lab", False):
        return

    def restore(self: Any, days: int) -> None:
        already = self._expiry is not None
        original(self, days)
        if not already:  # a new retrieval starts in progress; a repeat changes nothing
            self._status = "IN_PROGRESS"
            self._tick = 0

    restore._lab = True  # type: ignore[attr-defined]
    FakeKey.restore = restore  # type: ignore[method-assign]
