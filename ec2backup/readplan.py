"""How a session reads each volume: EBS direct or attached copies (issue 18).

- **ebs-direct**: the agent reads the snapshot's blocks with `GetSnapshotBlock`, many in
  flight; no volume is created, attached or hydrated. It spends the account's GetSnapshotBlock
  quota (1,000/s per account by default, shared by every session and restore, and 1,000/s per
  snapshot), so one session takes `ebs_direct_session_rps` of it (500/s by default, Veeam's
  per-operation figure: 250 MiB/s).
- **attached**: the worker gets copies of the volume created from the snapshot and reads them
  in parallel streams; the first read of each block is fetched lazily from S3
  (`first_read_mib_s` per copy) after the copies are created and attached
  (`volume_setup_seconds`); it spends no EBS direct quota.

`choose` estimates both from the blocks the session has to read (what ListChangedBlocks or
ListSnapshotBlocks listed) and takes the faster; incrementals and small volumes go direct,
large fulls go to copies. The reason names both estimates. Read from attached copies whatever
the estimates:

- snapshots encrypted with a KMS key: EBS direct reads of them need kms:Decrypt on the key
  outside EC2, which the IAM kit does not grant;
- snapshots in another account than the worker's: only a snapshot's owner may read its blocks,
  and GetSnapshotBlock on the production role would let the orchestrator (which holds that
  role too) read production data: the kit grants it to the worker role only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ec2backup.config import PerformanceSettings
from ec2backup.errors import UserError

ReadStrategy = Literal["attached", "ebs-direct"]
BLOCK_MIB = 0.5  # one EBS direct block: 512 KiB


class ReadRefused(UserError):
    pass


@dataclass(frozen=True)
class Choice:
    read: ReadStrategy
    reason: str
    direct_seconds: float
    attached_seconds: float


def estimates(blocks: int, copies: int, perf: PerformanceSettings) -> tuple[float, float]:
    """(ebs-direct seconds, attached seconds) to read `blocks` blocks."""
    mib = blocks * BLOCK_MIB
    direct = mib / (perf.ebs_direct_session_rps * BLOCK_MIB)
    attached = perf.volume_setup_seconds + mib / (perf.first_read_mib_s * max(1, copies))
    return direct, attached


def choose(
    blocks: int,
    copies: int,
    encrypted: bool,
    perf: PerformanceSettings,
    asked: Literal["auto", "attached", "ebs-direct"] = "auto",
    other_account: bool = False,
) -> Choice:
    direct, attached = estimates(blocks, copies, perf)
    figures = (
        f"{blocks} blocks: EBS direct ~{direct:.0f} s at {perf.ebs_direct_session_rps} "
        f"blocks/s, {copies} attached cop{'y' if copies == 1 else 'ies'} ~{attached:.0f} s"
    )
    if other_account and (asked == "ebs-direct" or asked == "auto"):
        why = (
            "the snapshots are in another account than the worker: GetSnapshotBlock there "
            "would need the production role, which the orchestrator holds too"
        )
        if asked == "ebs-direct":
            raise ReadRefused(f"--read ebs-direct: {why}")
        return Choice("attached", f"attached: {why} ({figures})", direct, attached)
    if asked != "auto":
        return Choice(asked, f"{asked} as asked ({figures})", direct, attached)
    if encrypted:
        return Choice(
            "attached",
            f"attached: the snapshot is KMS-encrypted (EBS direct would need kms:Decrypt "
            f"outside EC2) ({figures})",
            direct,
            attached,
        )
    if direct <= attached:
        return Choice("ebs-direct", f"ebs-direct: faster ({figures})", direct, attached)
    return Choice("attached", f"attached: faster ({figures})", direct, attached)
