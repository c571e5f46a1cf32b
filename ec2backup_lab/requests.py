"""Classify a raw AWS HTTP request: which service, account, region and API action it is.

The lab middleware uses this for metrics, fault injection and for answering the EBS
direct APIs itself. Only what the middleware needs is parsed; moto parses the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

_CRED_RE = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")

# EBS direct API routes (rest-json): method + path regex -> action name.
EBS_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/snapshots/(?P<snap>[^/]+)/blocks/(?P<idx>\d+)$"), "GetSnapshotBlock"),
    ("PUT", re.compile(r"^/snapshots/(?P<snap>[^/]+)/blocks/(?P<idx>\d+)$"), "PutSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/(?P<snap>[^/]+)/blocks$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/(?P<snap>[^/]+)/changedblocks$"), "ListChangedBlocks"),
    ("POST", re.compile(r"^/snapshots/completion/(?P<snap>[^/]+)$"), "CompleteSnapshot"),
    ("POST", re.compile(r"^/snapshots$"), "StartSnapshot"),
]


@dataclass
class AwsRequest:
    service: str
    region: str
    access_key: str
    action: str
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]
    route: dict[str, str]

    @property
    def account_id(self) -> str:
        if "x-moto-account-id" in self.headers:
            return self.headers["x-moto-account-id"]
        from moto.iam.models import get_account_id_from

        return str(get_account_id_from(self.access_key))

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json_body(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _s3_action(method: str, path: str, query: dict[str, list[str]]) -> str:
    has_key = path.strip("/").count("/") >= 1
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        if "restore" in query:
            return "RestoreObject"
        return "PostObject"
    if method == "GET":
        return "GetObject" if has_key else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    return method


def classify(environ: dict[str, Any], body: bytes) -> AwsRequest | None:
    """Return the parsed request, or None when it is not a signed AWS API call."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = _CRED_RE.search(auth)
    if not m:
        return None
    access_key, region, service = m.group(1), m.group(2), m.group(3)
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    headers = {
        k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
    }
    route: dict[str, str] = {}
    action = ""
    if service == "ebs":
        for route_method, pattern, name in EBS_ROUTES:
            rm = pattern.match(path)
            if rm and route_method == method:
                action, route = name, rm.groupdict()
                break
    elif service == "s3":
        action = _s3_action(method, path, query)
    elif "x-amz-target" in headers:
        action = headers["x-amz-target"].rsplit(".", 1)[-1]
    else:
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        action = (form.get("Action") or query.get("Action") or [""])[0]
    return AwsRequest(
        service=service,
        region=region,
        access_key=access_key,
        action=action or "Unknown",
        method=method,
        path=path,
        query=query,
        body=body,
        headers=headers,
        route=route,
    )
