"""AWS-shaped error responses for each wire protocol, so botocore raises `ClientError`.

Used for injected faults and for the EBS direct APIs the lab answers itself.
"""

from __future__ import annotations

import json
import uuid
from xml.sax.saxutils import escape

from ec2backup_lab.requests import AwsRequest

Response = tuple[int, list[tuple[str, str]], bytes]

# Throttling codes per service, used by `lab fault --throttle`.
THROTTLE_CODES = {
    "ec2": ("RequestLimitExceeded", 503),
    "ebs": ("RequestThrottledException", 400),
    "s3": ("SlowDown", 503),
}
DEFAULT_THROTTLE = ("ThrottlingException", 400)


class ControlError(Exception):
    """A lab control API error: rendered as JSON `{"error": ...}` with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LabAwsError(Exception):
    """Raised by lab handlers; rendered in the protocol of the request."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        fields: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        # Members of the error's shape beyond its message (EBS direct: `Reason`), which
        # botocore puts at the top of `ClientError.response`.
        self.fields = fields or {}


def default_status(code: str) -> int:
    lowered = code.lower()
    if "notfound" in lowered or code == "NoSuchKey":
        return 404
    if lowered in ("internalerror", "internalfailure", "internalserverexception"):
        return 500
    if lowered in ("serviceunavailable", "slowdown", "requestlimitexceeded"):
        return 503
    if "accessdenied" in lowered or "unauthorized" in lowered:
        return 403
    return 400


def render_error(
    req: AwsRequest | None,
    code: str,
    message: str,
    status: int,
    fields: dict[str, str] | None = None,
) -> Response:
    request_id = str(uuid.uuid4())
    service = req.service if req else ""
    if service == "ebs":
        body = json.dumps({"message": message, "Message": message, **(fields or {})}).encode()
        return (
            status,
            [
                ("Content-Type", "application/json"),
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", request_id),
            ],
            body,
        )
    if req is not None and "x-amz-target" in req.headers:
        body = json.dumps({"__type": code, "message": message}).encode()
        return status, [("Content-Type", "application/x-amz-json-1.1")], body
    msg = escape(message)
    if service == "ec2":
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(code)}</Code><Message>{msg}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    elif service == "s3":
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{escape(code)}</Code><Message>{msg}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
    else:
        xml = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{escape(code)}</Code><Message>{msg}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return status, [("Content-Type", "text/xml")], xml.encode()
