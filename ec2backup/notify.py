"""Policy run notifications: one SNS message per run (policy `notify`) with its summary.

The body is JSON (instances, each one's outcome, error and bytes; totals; notes), so an SQS
queue, a Lambda or a chat bridge can read it; the subject is one human line for e-mail
subscriptions. Message attributes `policy` and `outcome` let a subscription's filter policy
pick outcomes without parsing the body. No role ARNs: each instance names its account id.
"""

from __future__ import annotations

import json
from typing import Any

from ec2backup import aws
from ec2backup.models.policy import BackupPolicyOutput

# SNS limits a subject to 100 characters (Publish, "Subject").
SUBJECT_MAX = 100


def summary(outcome: str, run_id: str, report: BackupPolicyOutput) -> dict[str, Any]:
    instances = []
    for o in report.instances:
        instances.append(
            {
                "instance_id": o.instance_id,
                "region": o.region,
                "account_id": aws.account_of_role(o.account_role_arn)
                if o.account_role_arn
                else None,
                "status": o.status,
                "session_id": o.session_id,
                "restore_point_id": o.restore_point_id or o.snapshot_set_id,
                "bytes_read": o.bytes_read,
                "bytes_stored": o.bytes_stored,
                "seconds": o.seconds,
                "error": o.error,
                "anomaly": o.anomaly,
            }
        )
    failed = sum(o.status != "completed" for o in report.instances)
    return {
        "policy": report.policy,
        "run_id": run_id,
        "outcome": outcome,
        "instances_total": len(report.instances),
        "instances_failed": failed,
        "bytes_read": sum(o.bytes_read for o in report.instances),
        "bytes_stored": sum(o.bytes_stored for o in report.instances),
        "instances": instances,
        "notes": list(report.notes),
    }


def subject(outcome: str, report: BackupPolicyOutput) -> str:
    n = len(report.instances)
    failed = sum(o.status != "completed" for o in report.instances)
    text = f"ec2backup policy {report.policy}: {outcome}"
    if failed:
        text += f" ({failed} of {n} instances failed)"
    else:
        text += f" ({n} instances)"
    return text[:SUBJECT_MAX]


def publish(topic_arn: str, outcome: str, run_id: str, report: BackupPolicyOutput) -> str:
    """Publish the run's summary with the orchestrator's credentials in the topic's Region
    (a topic in another account needs a topic policy allowing the backup account)."""
    region = topic_arn.split(":")[3]
    sent = aws.client("sns", region).publish(
        TopicArn=topic_arn,
        Subject=subject(outcome, report),
        Message=json.dumps(summary(outcome, run_id, report), indent=2),
        MessageAttributes={
            "policy": {"DataType": "String", "StringValue": report.policy},
            "outcome": {"DataType": "String", "StringValue": outcome},
        },
    )
    return str(sent["MessageId"])
