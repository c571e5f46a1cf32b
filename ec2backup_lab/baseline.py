"""The lab's organization: accounts with the IAM kit's worker role and profile deployed.

On AWS an operator deploys the IAM kit (docs/iam.md) in the backup account and, as a StackSet,
in every production account; RunInstances refuses an instance profile that does not exist in
the account. moto starts with empty IAM, so the lab provisions the kit's worker role and
instance profile (`ec2backup-worker`, trusted by EC2) in the lab's accounts when it starts and
after every reset. A profile deleted afterwards stays deleted (doctor must notice it).
"""

from __future__ import annotations

import json
from typing import Any

# The backup account (the lab's default credentials) and the production accounts the tests
# and the demo use.
LAB_ACCOUNTS = ("123456789012", "222222222222", "333333333333", "444444444444")
WORKER_ROLE_NAME = "ec2backup-worker"
WORKER_INSTANCE_PROFILE = "ec2backup-worker"
KIT_POLICY_NAME = "ec2backup-worker"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _iam(account: str) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account]["aws"]


def provision(account: str) -> None:
    from ec2backup import iamkit

    iam = _iam(account)
    try:
        iam.get_role(WORKER_ROLE_NAME)
    except Exception:
        iam.create_role(
            role_name=WORKER_ROLE_NAME,
            assume_role_policy_document=json.dumps(EC2_TRUST),
            path="/",
            permissions_boundary=None,
            description="ec2backup worker instances (the lab's IAM kit)",
            tags=[],
            max_session_duration="43200",
        )
    # the kit's worker policy, inline as its template attaches it (what `lab up
    # --enforce-iam` holds the workers to)
    role = iam.get_role(WORKER_ROLE_NAME)
    role.policies.setdefault(KIT_POLICY_NAME, json.dumps(iamkit.policy(iamkit.Role.worker)))
    if not iam.instance_profiles.get(WORKER_INSTANCE_PROFILE):
        iam.create_instance_profile(WORKER_INSTANCE_PROFILE, "/", [WORKER_ROLE_NAME])


def provision_all() -> None:
    for account in LAB_ACCOUNTS:
        provision(account)
