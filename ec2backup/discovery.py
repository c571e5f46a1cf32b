"""Which instances a policy protects: its selection, minus instances that a higher-priority
enabled policy also selects (an instance is protected by one policy only)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ec2backup import aws
from ec2backup.policy import Policy, Selection

# Instances in these states can be snapshotted (EBS volumes of a stopped instance too).
PROTECTABLE_STATES = ["pending", "running", "stopping", "stopped"]


class Target(BaseModel):
    instance_id: str
    region: str
    account_role_arn: str | None = None
    tags: dict[str, str] = {}


def _matches(selection: Selection, target: Target) -> bool:
    if target.region not in selection.regions:
        return False
    if target.account_role_arn not in selection.accounts:
        return False
    if selection.instance_ids and target.instance_id in selection.instance_ids:
        return True
    return bool(selection.tags) and all(target.tags.get(k) == v for k, v in selection.tags.items())


def select(selection: Selection) -> list[Target]:
    found: dict[tuple[str, str | None, str], Target] = {}
    for region in selection.regions:
        for role in selection.accounts:
            ec2 = aws.client("ec2", region, role)
            queries: list[dict[str, Any]] = []
            if selection.tags:
                queries.append(
                    {
                        "Filters": [
                            *(
                                {"Name": f"tag:{k}", "Values": [v]}
                                for k, v in selection.tags.items()
                            ),
                            {"Name": "instance-state-name", "Values": PROTECTABLE_STATES},
                        ]
                    }
                )
            if selection.instance_ids:
                queries.append(
                    {
                        "Filters": [
                            {"Name": "instance-id", "Values": selection.instance_ids},
                            {"Name": "instance-state-name", "Values": PROTECTABLE_STATES},
                        ]
                    }
                )
            for query in queries:
                for page in ec2.get_paginator("describe_instances").paginate(**query):
                    for r in page["Reservations"]:
                        for i in r["Instances"]:
                            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                            target = Target(
                                instance_id=i["InstanceId"],
                                region=region,
                                account_role_arn=role,
                                tags=tags,
                            )
                            found[(region, role, target.instance_id)] = target
    return sorted(found.values(), key=lambda t: (t.region, t.account_role_arn or "", t.instance_id))


def protected_by(policy: Policy, others: list[Policy]) -> tuple[list[Target], list[str]]:
    """(instances this policy protects, notes on instances left to higher-priority policies)."""
    targets = select(policy.selection)
    rivals = [
        o for o in others if o.name != policy.name and o.enabled and o.priority > policy.priority
    ]
    mine, notes = [], []
    for t in targets:
        winner = next(
            (o for o in sorted(rivals, key=lambda o: -o.priority) if _matches(o.selection, t)), None
        )
        if winner is None:
            mine.append(t)
        else:
            notes.append(
                f"{t.instance_id} ({t.region}) is protected by policy {winner.name} "
                f"(priority {winner.priority} > {policy.priority})"
            )
    return mine, notes
