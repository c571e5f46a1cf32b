"""Instance metadata for the lab's worker instances, IMDSv2 only (`HttpTokens=required`).

On EC2 an agent finds its instance id, its zone (botocore's Region) and its instance role's
keys at http://169.254.169.254/, after `PUT latest/api/token`; a request without a token is
refused (401) on an instance launched with `HttpTokens=required`, which is how the product
launches workers. The lab serves each instance's metadata at `/_lab/imds/<instance id>/`:
an agent booted for real (ec2backup_lab/bootstrap.py) gets no keys, id or Region in its
environment, only `AWS_EC2_METADATA_SERVICE_ENDPOINT` pointing there, the variable botocore
and the agent read in place of the link-local address.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

# AWS: X-aws-ec2-metadata-token-ttl-seconds must be 1..21600.
MAX_TOKEN_TTL = 21600


@dataclass
class Metadata:
    instance_id: str
    region: str
    zone: str
    role_name: str
    credentials: dict[str, str]


_instances: dict[str, Metadata] = {}
_tokens: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()
refused_without_token = 0  # IMDSv1 requests refused (for tests)


def register(meta: Metadata) -> None:
    with _lock:
        _instances[meta.instance_id] = meta


def forget(instance_id: str) -> None:
    with _lock:
        _instances.pop(instance_id, None)


def _text(status: int, body: str, ctype: str = "text/plain") -> tuple[int, bytes, str]:
    return status, body.encode(), ctype


def handle(environ: dict[str, Any]) -> tuple[int, bytes, str]:
    global refused_without_token
    parts = environ.get("PATH_INFO", "").split("/")  # '', '_lab', 'imds', <id>, rest...
    instance_id, rest = (parts[3] if len(parts) > 3 else ""), "/".join(parts[4:]).rstrip("/")
    method = environ.get("REQUEST_METHOD", "GET")
    with _lock:
        meta = _instances.get(instance_id)
    if meta is None:
        return _text(404, "Not Found")
    if rest == "latest/api/token":
        if method != "PUT":
            return _text(405, "Method Not Allowed")
        try:
            ttl = int(environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS", ""))
        except ValueError:
            return _text(400, "Bad Request")
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return _text(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        with _lock:
            _tokens[token] = (instance_id, time.time() + ttl)
        return _text(200, token)
    token = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN", "")
    with _lock:
        owner, expiry = _tokens.get(token, ("", 0.0))
        if owner != instance_id or time.time() > expiry:
            refused_without_token += 1
            return _text(401, "Unauthorized")
    prefix = "latest/meta-data/"
    creds_path = f"{prefix}iam/security-credentials"
    if rest == f"{prefix}instance-id":
        return _text(200, meta.instance_id)
    if rest == f"{prefix}placement/availability-zone":
        return _text(200, meta.zone)
    if rest == f"{prefix}placement/region":
        return _text(200, meta.region)
    if rest == creds_path:
        return _text(200, meta.role_name)
    if rest == f"{creds_path}/{meta.role_name}":
        # the lab's instance-role keys do not expire (lab sts exempts them); EC2 renews
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)
        body = {
            "Code": "Success",
            "LastUpdated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": meta.credentials["AWS_ACCESS_KEY_ID"],
            "SecretAccessKey": meta.credentials["AWS_SECRET_ACCESS_KEY"],
            "Token": meta.credentials["AWS_SESSION_TOKEN"],
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return _text(200, json.dumps(body), "application/json")
    if rest == "latest/dynamic/instance-identity/document":
        doc = {"instanceId": meta.instance_id, "region": meta.region,
               "availabilityZone": meta.zone}  # fmt: skip
        return _text(200, json.dumps(doc), "application/json")
    return _text(404, "Not Found")
