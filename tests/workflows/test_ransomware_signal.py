"""The ransomware signal (issue 17): after `lab encrypt-attack --fraction 0.2` the next session's
restore point is flagged with a reason; after an ordinary `lab churn --fraction 0.05` it is not;
`restore instance --last-clean INSTANCE_ID` restores the point before the attack, byte-exact,
although a later, unflagged point exists."""

from __future__ import annotations

import json
from typing import Any

from session_helpers import Workbench


def _points(wb: Workbench, instance_id: str) -> dict[str, dict[str, Any]]:
    listing = wb.cli_json("restore-points", "list", "--instance", instance_id, "--json")
    return {rp["id"]: rp for rp in listing["restore_points"] if rp["kind"] == "backup"}


def test_an_attack_is_flagged_and_the_last_clean_point_restores(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.3", "--seed", "41")
    instance_id, volume_id = inst["instance_id"], inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()

    def backup() -> str:
        result = wb.backup(instance_id, "--repo", repo).result
        assert result is not None
        return str(result["restore_point_id"])

    full = backup()
    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "2")
    ordinary = backup()
    clean_content = wb.checksum(volume_id)  # what the point before the attack holds
    attack = json.loads(
        wb.cli("lab", "encrypt-attack", volume_id, "--fraction", "0.2", "--seed", "3").stdout
    )
    assert attack["bytes"] > 0
    attacked = backup()
    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "4")
    after = backup()

    points = _points(wb, instance_id)
    assert points[full]["anomaly"] == "no-baseline"
    assert points[ordinary]["anomaly"] == "clean", points[ordinary]
    assert points[attacked]["anomaly"] == "anomaly", points[attacked]
    (reason,) = points[attacked]["anomaly_reasons"]
    assert volume_id in reason and "incompressible" in reason
    assert points[after]["anomaly"] == "clean"  # quiet again, but it holds encrypted blocks
    assert [rp for rp, p in points.items() if p["last_clean"]] == [ordinary]
    table = wb.cli("restore-points", "list", "--instance", instance_id)
    assert "ANOMALY" in table.stdout and "last clean" in table.stdout

    restored = wb.cli("restore", "instance", "--last-clean", instance_id, "--wait", timeout=300)
    assert ordinary in restored.stderr
    result = json.loads("\n".join(restored.stdout.splitlines()[1:]))
    assert result["status"] == "completed"
    (data,) = [v for v in result["volumes"] if v["source_volume_id"] == volume_id]
    assert wb.checksum(data["volume_id"]) == clean_content
    assert wb.checksum(volume_id) != clean_content
