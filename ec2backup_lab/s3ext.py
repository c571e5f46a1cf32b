"""S3 Glacier retrieval that takes time in the lab.

moto completes `RestoreObject` at once by default, and with its `manual` state transition an
object reads as restored *before* the transition starts (moto-audit, gap 22). The lab fixes the
start (a restore request puts the object in IN_PROGRESS) and uses moto's manual progression:
the restored copy becomes readable only after `s3_restore_reads` further reads (HEAD/GET) of
the object, so a product polling the object's state really waits for several polls.
"""

from __future__ import annotations

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


def install() -> None:
    from moto.s3.models import FakeKey

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
