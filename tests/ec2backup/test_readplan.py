"""The read-strategy choice (ec2backup.readplan) on hand-made figures."""

from __future__ import annotations

import pytest

from ec2backup.config import PerformanceSettings
from ec2backup.readplan import ReadRefused, choose, estimates

PERF = PerformanceSettings(ebs_direct_session_rps=500, first_read_mib_s=60, volume_setup_seconds=30)


def test_estimates() -> None:
    direct, attached = estimates(10_000, 2, PERF)  # 5,000 MiB
    assert direct == pytest.approx(20.0)  # 500 blocks/s
    assert attached == pytest.approx(30 + 5000 / 120)


def test_small_and_incremental_reads_go_direct_and_large_fulls_to_copies_when_faster() -> None:
    small = choose(2_000, 1, False, PERF)
    assert small.read == "ebs-direct" and small.reason.startswith("ebs-direct: faster")
    # With a slow EBS direct share and four fast copies, copies win.
    slow = PerformanceSettings(ebs_direct_session_rps=50, first_read_mib_s=250)
    big = choose(200_000, 4, False, slow)
    assert big.read == "attached" and big.direct_seconds > big.attached_seconds
    assert "200000 blocks" in big.reason


def test_encrypted_or_other_account_snapshots_are_read_from_copies() -> None:
    assert choose(10, 1, True, PERF).read == "attached"
    other = choose(10, 1, False, PERF, other_account=True)
    assert other.read == "attached" and "another account" in other.reason
    with pytest.raises(ReadRefused, match="--read ebs-direct: the snapshots are in another"):
        choose(10, 1, False, PERF, "ebs-direct", other_account=True)
    assert choose(10, 1, True, PERF, "ebs-direct").read == "ebs-direct"  # as asked
