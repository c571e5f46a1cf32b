"""IAM in the lab: `lab up --enforce-iam` and `SimulatePrincipalPolicy`.

moto answers every request whatever the caller's policies say (its own IAM enforcement
evaluates no Resource or Condition and would refuse most of the IAM kit's conditioned
statements). With `enforce_iam` on (`lab up --enforce-iam`, or `/_lab/config`), the lab
refuses a request signed with an assumed role's keys unless the role's identity policies
(inline and attached) allow its action — at the level of actions, except S3 object operations,
whose `Resource` (the object's ARN) must match too; `Condition` is not evaluated, nor Resource
elsewhere (documented in docs/lab.md). The lab's own root keys (what
the CLI and the tests use) are the account's root: always allowed, as on AWS.

`SimulatePrincipalPolicy` (moto has none) evaluates a role's policies with the same engine,
enforcement on or off, so `ec2backup doctor` can name a missing action.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any
from xml.sax.saxutils import escape

# The query/JSON services' IAM prefixes are their signing names; S3 operations are named
# after their IAM actions here (the REST operation does not say which).
S3_ACTIONS = {
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "RestoreObject": "s3:RestoreObject",
    "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
}
# Bucket sub-resources: (method, query key) -> action
S3_SUBRESOURCES = {
    ("GET", "lifecycle"): "s3:GetLifecycleConfiguration",
    ("PUT", "lifecycle"): "s3:PutLifecycleConfiguration",
    ("GET", "location"): "s3:GetBucketLocation",
    ("GET", "versioning"): "s3:GetBucketVersioning",
    ("PUT", "versioning"): "s3:PutBucketVersioning",
    ("GET", "object-lock"): "s3:GetBucketObjectLockConfiguration",
    ("PUT", "object-lock"): "s3:PutBucketObjectLockConfiguration",
}


# Needs no permission: "No permissions are required to perform this operation" (STS API
# reference, GetCallerIdentity); not even an explicit Deny stops it.
ALWAYS_ALLOWED = {"sts:GetCallerIdentity"}


def iam_action(req: Any) -> str:
    if req.service == "s3":
        for (method, key), action in S3_SUBRESOURCES.items():
            if req.method == method and key in req.query:
                return action
        if req.method == "PUT" and "x-amz-copy-source" in req.headers:
            return "s3:PutObject"
        return S3_ACTIONS.get(req.action, f"s3:{req.action}")
    return f"{req.service}:{req.action}"


def _statements(document: str | dict[str, Any]) -> list[dict[str, Any]]:
    doc = document
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            doc = json.loads(urllib.parse.unquote(doc))
    assert isinstance(doc, dict)
    statements = doc.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _matches(pattern: str, action: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def role_documents(role: Any) -> list[str | dict[str, Any]]:
    docs: list[str | dict[str, Any]] = list(role.policies.values())
    for managed in role.managed_policies.values():
        versions = getattr(managed, "versions", [])
        docs += [v.document for v in versions if getattr(v, "is_default", False)]
    return docs


# S3 object operations are also judged by their Resource (the object's ARN): what keeps a
# worker from deleting packs while it may delete its own locks and checkpoints.
S3_OBJECT_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:RestoreObject",
}
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


def s3_object_arn(req: Any) -> str | None:
    """`arn:aws:s3:::bucket/key` of a path-style object request (None: not one)."""
    path = urllib.parse.unquote(req.path).lstrip("/")
    if req.service != "s3" or "/" not in path or req.action == "DeleteObjects":
        return None
    return f"arn:aws:s3:::{path}"


def _resource_matches(st: dict[str, Any], resource: str | None) -> bool:
    """Whether a statement's Resource covers `resource` (None: not evaluated). Unfilled kit
    placeholders (`${RepositoryBucket}`) match anything."""
    if resource is None:
        return True
    patterns = st.get("Resource", "*")
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(_matches(_PLACEHOLDER.sub("*", p), resource) for p in patterns)


def allows(documents: list[str | dict[str, Any]], action: str, resource: str | None = None) -> bool:
    """Identity-policy decision for one action (and, for S3 objects, its resource): an
    explicit Deny wins, then any Allow."""
    allowed = False
    for document in documents:
        for st in _statements(document):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if not any(_matches(a, action) for a in actions):
                continue
            if not _resource_matches(st, resource):
                continue
            if st.get("Effect") == "Deny":
                return False
            allowed = allowed or st.get("Effect") == "Allow"
    return allowed


def _role(role_arn: str) -> Any:
    from moto.iam.models import iam_backends

    parts = role_arn.split(":")
    try:
        return iam_backends[parts[4]]["aws"].get_role_by_arn(role_arn)
    except Exception:
        return None


def caller_role_arn(access_key: str) -> str | None:
    """The role whose session signed with these keys (None: root or unknown keys)."""
    from moto.iam.models import get_account_id_from
    from moto.sts.models import sts_backends

    account = get_account_id_from(access_key)
    assumed = sts_backends[account]["aws"].get_assumed_role_from_access_key(access_key)
    return str(assumed.role_arn) if assumed is not None else None


def denial(req: Any) -> tuple[str, str, int] | None:
    """(code, message, status) when the caller's role may not do this; None otherwise."""
    role_arn = caller_role_arn(req.access_key)
    if role_arn is None:
        return None  # the account's root (the lab's default keys)
    action = iam_action(req)
    if action in ALWAYS_ALLOWED:
        return None
    role = _role(role_arn)
    resource = s3_object_arn(req) if action in S3_OBJECT_ACTIONS else None
    if role is not None and allows(role_documents(role), action, resource):
        return None
    message = f"User: {role_arn} is not authorized to perform: {action}"
    if resource is not None:
        message += f" on resource: {resource}"
    if req.service == "ec2":
        return (
            "UnauthorizedOperation",
            f"You are not authorized to perform this operation. {message}",
            403,
        )
    if req.service in ("s3", "sts", "iam"):
        return "AccessDenied", message, 403
    return "AccessDeniedException", message, 400 if req.service != "ebs" else 403


def simulate(body: bytes) -> tuple[int, bytes]:
    """`SimulatePrincipalPolicy` (query protocol) for a role: EvalDecision per action."""
    params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    source = (params.get("PolicySourceArn") or [""])[0]
    actions = [v[0] for k, v in sorted(params.items()) if k.startswith("ActionNames.member.")]
    role = _role(source)
    if role is None:
        error = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>NoSuchEntity</Code>"
            f"<Message>{escape(source)} not found</Message></Error></ErrorResponse>"
        )
        return 404, error.encode()
    documents = role_documents(role)
    results = "".join(
        "<member><EvalActionName>{}</EvalActionName><EvalResourceName>*</EvalResourceName>"
        "<EvalDecision>{}</EvalDecision></member>".format(
            escape(a), "allowed" if allows(documents, a) else "implicitDeny"
        )
        for a in actions
    )
    xml = (
        '<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
        "<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated>"
        f"<EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult>"
        "<ResponseMetadata><RequestId>lab</RequestId></ResponseMetadata>"
        "</SimulatePrincipalPolicyResponse>"
    )
    return 200, xml.encode()
