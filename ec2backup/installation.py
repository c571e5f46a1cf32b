"""The installation key: one random 256-bit key per ec2backup installation.

It encrypts snapshot metadata tags (and, later, Temporal payloads). It is stored only in AWS
Secrets Manager (encrypted there with KMS), in the backup account's home Region, under
`ec2backup/installation`; it never appears in tags, payloads, logs or command lines.
"""

from __future__ import annotations

import base64
import json
import os
import threading

from ec2backup import aws, crypto

INSTALLATION_SECRET = "ec2backup/installation"
DEFAULT_HOME_REGION = "us-east-1"

_cached: dict[str, bytes] = {}
_lock = threading.Lock()


def home_region() -> str:
    return (
        os.environ.get("EC2BACKUP_HOME_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_HOME_REGION
    )


def installation_key(create: bool = True) -> bytes:
    """Load the installation key (creating it on first use when `create`)."""
    region = home_region()
    with _lock:
        if region in _cached:
            return _cached[region]
        sm = aws.client("secretsmanager", region)
        try:
            value = sm.get_secret_value(SecretId=INSTALLATION_SECRET)["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            if not create:
                raise
            value = json.dumps({"key": base64.b64encode(crypto.random_key()).decode()})
            try:
                sm.create_secret(
                    Name=INSTALLATION_SECRET,
                    SecretString=value,
                    Description="ec2backup installation key (tags, payloads)",
                )
            except sm.exceptions.ResourceExistsException:  # another worker won the race
                value = sm.get_secret_value(SecretId=INSTALLATION_SECRET)["SecretString"]
        key = base64.b64decode(json.loads(value)["key"])
        _cached[region] = key
        return key
