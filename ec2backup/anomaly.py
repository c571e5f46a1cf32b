"""The ransomware signal: what a backup session already sees, against the instance's history.

Ransomware encrypts files in place. Seen from an image-level incremental that means two things
at once: many more blocks change than usual, and the new blocks do not compress (ciphertext is
indistinguishable from random). Neither alone is rare (a package upgrade changes many blocks; a
media library is incompressible), which is why each volume is judged against *its own* earlier
backups, and the share of incompressible new blocks must jump, not merely be high.

Per volume, a backup records (`VolumeSignal`): the changed-block rate (blocks read / blocks of
the volume: for an incremental, what changed-block tracking listed), the new (not
deduplicated) blocks, and the share of those stored uncompressed. The verdict (`assess`):

- `no-baseline`: no earlier restore point of this instance to compare with (its first backup).
- `anomaly` when, for some volume with at least MIN_NEW_BLOCKS new blocks, either
  * the incompressible share is at least INCOMPRESSIBLE_ALARM and at least SHARE_JUMP above the
    volume's usual share (median of its earlier points), or
  * the changed-block rate is at least RATE_FACTOR times its usual incremental rate (and at
    least RATE_FLOOR) while the incompressible share is RATE_SHARE_JUMP above usual;
  each such volume gives one reason naming the figures.
- `clean` otherwise.

Earlier points flagged as anomalies are left out of the baseline (an attack must not become the
norm). The newest *clean* restore point of an instance is the newest one before its first
unresolved anomaly: a later point, even unflagged, holds what the attacker wrote
(`last_clean`). An operator who finds an anomaly was no attack (a volume encrypted on purpose)
resolves it (`restore-points resolve`): it then counts as clean, in the baseline too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ec2backup.repository.restorepoint import (
    AnomalySignal,
    RestorePoint,
    VolumeRecord,
    VolumeSignal,
)

# Fewer new blocks than this say nothing either way (a quiet day's incremental).
MIN_NEW_BLOCKS = 16
# Encrypted data: essentially every new block is incompressible...
INCOMPRESSIBLE_ALARM = 0.85
# ...and that is well above what this volume usually writes (a volume of media files writes
# incompressible blocks every day and stays unflagged).
SHARE_JUMP = 0.30
# Mass change: this many times the usual incremental rate, and a tenth of the volume at least,
# with a clear rise of incompressible blocks (an upgrade rewrites compressible binaries).
RATE_FACTOR = 4.0
RATE_FLOOR = 0.10
RATE_SHARE_JUMP = 0.15


def volume_signal(record: VolumeRecord) -> VolumeSignal:
    stats = record.stats
    total = max(1, stats.blocks_total)
    new = stats.blocks_new
    return VolumeSignal(
        name=record.metadata.source_volume_id or record.name,
        device=record.device,
        changed_rate=stats.blocks_read / total,
        new_blocks=new,
        incompressible_share=(stats.blocks_incompressible / new) if new else 0.0,
    )


def _history(points: Sequence[RestorePoint]) -> dict[str, list[tuple[VolumeSignal, bool]]]:
    """Earlier figures per volume: (signal, whether that backup was an incremental)."""
    out: dict[str, list[tuple[VolumeSignal, bool]]] = {}
    for rp in points:
        if rp.anomaly is not None and rp.anomaly.flagged:
            continue  # an attack is not the norm (a resolved anomaly was normal after all)
        for record in rp.volumes:
            signal = volume_signal(record)
            incremental = record.metadata.parent_snapshot_id is not None
            out.setdefault(signal.name, []).append((signal, incremental))
    return out


def assess(records: Sequence[VolumeRecord], earlier: Sequence[RestorePoint]) -> AnomalySignal:
    """The verdict of a new backup (`records`) against the instance's earlier restore points."""
    signals = [volume_signal(r) for r in records]
    baseline = [rp for rp in earlier if rp.anomaly is None or not rp.anomaly.flagged]
    if not baseline:
        return AnomalySignal(verdict="no-baseline", volumes=signals)
    history = _history(earlier)
    reasons: list[str] = []
    for signal in signals:
        past = history.get(signal.name)
        if not past or signal.new_blocks < MIN_NEW_BLOCKS:
            continue
        usual_share = statistics.median(s.incompressible_share for s, _ in past)
        label = f"{signal.name}" + (f" ({signal.device})" if signal.device else "")
        share, jump = signal.incompressible_share, signal.incompressible_share - usual_share
        if share >= INCOMPRESSIBLE_ALARM and jump >= SHARE_JUMP:
            reasons.append(
                f"{label}: {share:.0%} of {signal.new_blocks} new blocks incompressible "
                f"(usually {usual_share:.0%}): data encrypted in place?"
            )
            continue
        rates = [s.changed_rate for s, incremental in past if incremental]
        if not rates:
            continue
        usual_rate = statistics.median(rates)
        if (
            signal.changed_rate >= max(RATE_FLOOR, RATE_FACTOR * usual_rate)
            and jump >= RATE_SHARE_JUMP
        ):
            reasons.append(
                f"{label}: {signal.changed_rate:.0%} of its blocks changed (usually "
                f"{usual_rate:.1%}), {share:.0%} of them incompressible (usually "
                f"{usual_share:.0%})"
            )
    return AnomalySignal(
        verdict="anomaly" if reasons else "clean",
        reasons=reasons,
        volumes=signals,
        baseline_points=len(baseline),
    )


def last_clean(points: Sequence[tuple[str, RestorePoint]]) -> str | None:
    """The id of the newest clean restore point of one instance's points: the newest before
    the first anomaly (None: the first point is already one)."""
    ordered = sorted(points, key=lambda p: p[1].time)
    clean: str | None = None
    for rp_id, rp in ordered:
        if rp.anomaly is not None and rp.anomaly.flagged:
            return clean
        clean = rp_id
    return clean
