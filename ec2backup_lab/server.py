"""The lab AWS endpoint: moto's WSGI app, extended in-process, behind a small middleware.

The middleware
- answers the lab control API under `/_lab/` (JSON),
- answers the EBS direct APIs itself (moto's have no real data; see `ebsdirect`),
- counts API calls by name and injects faults and throttling,
- wipes the lab's files on `POST /moto-api/reset`.

Run it with `python -m ec2backup_lab.server --dir DIR --port PORT`; `ec2backup lab up` does.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Must be set before moto is imported: no ~1,300 foreign AMI snapshots in every account.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
# Cross-account snapshot copies are part of the product; moto's S3 must not refuse them either.
os.environ.setdefault("MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS", "true")

from ec2backup_lab import iam as lab_iam
from ec2backup_lab import sts, timing
from ec2backup_lab.awserrors import (
    DEFAULT_THROTTLE,
    THROTTLE_CODES,
    ControlError,
    LabAwsError,
    Response,
    default_status,
    render_error,
)
from ec2backup_lab.requests import AwsRequest, classify
from ec2backup_lab.runtime import LabRuntime, get_runtime, set_runtime

log = logging.getLogger("ec2backup_lab")

StartResponse = Callable[..., Any]
# A control handler gets (method, path parts after /_lab/, query, json body) and returns
# (status, json-able body).
ControlHandler = Callable[[str, list[str], dict[str, list[str]], Any], tuple[int, Any]]
CONTROL_ROUTES: dict[str, ControlHandler] = {}
# Handlers for API actions the lab answers itself instead of moto: service -> handler.
SERVICE_HANDLERS: dict[str, Callable[[AwsRequest], Response]] = {}


def _respond(start_response: StartResponse, response: Response) -> list[bytes]:
    status, headers, body = response
    reason = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
    }.get(status, "X")
    headers = [*headers, ("Content-Length", str(len(body)))]
    start_response(f"{status} {reason}", headers)
    return [body]


def _json(start_response: StartResponse, status: int, payload: Any) -> list[bytes]:
    body = json.dumps(payload, default=str).encode()
    return _respond(start_response, (status, [("Content-Type", "application/json")], body))


class LabMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], runtime: LabRuntime) -> None:
        self.app = app
        self.runtime = runtime

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path.startswith("/_lab/imds/"):  # instance metadata: headers matter (IMDSv2)
            from ec2backup_lab import imds

            status, out, ctype = imds.handle(environ)
            return _respond(start_response, (status, [("Content-Type", ctype)], out))
        if path.startswith("/_lab/") or path == "/_lab":
            return self._control(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            from ec2backup_lab import baseline, control

            control.reset_lab_files()
            result = self.app(environ, start_response)
            baseline.provision_all()  # the kit's instance profiles, as after `lab up`
            return result
        req = classify(environ, body)
        if req is None or "x-ec2backup-lab-internal" in req.headers:
            # The lab's own setup calls (seeding) take no modelled time (timing.py); moto
            # answers within the call, so the whole answer is produced untimed.
            with timing.untimed():
                return list(self.app(environ, start_response))
        with self.runtime.lock:
            self.runtime.api_calls[req.action] += 1
        if sts.expired(req.access_key):
            code = sts.expired_code(req.service, "x-amz-target" in req.headers)
            return _respond(start_response, render_error(req, code, sts.EXPIRED_MESSAGE, 400))
        if req.service == "iam" and req.action == "SimulatePrincipalPolicy":
            status, xml = lab_iam.simulate(body)
            return _respond(start_response, (status, [("Content-Type", "text/xml")], xml))
        if self.runtime.enforce_iam:
            refused = lab_iam.denial(req)
            if refused is not None:
                code, message, status = refused
                return _respond(start_response, render_error(req, code, message, status))
        if req.service == "secretsmanager" and req.action == "GetSecretValue":
            from ec2backup_lab import secrets

            answer = secrets.cross_account_get(req.access_key, body)
            if answer is not None:
                granted, payload = answer
                if not granted:
                    error = render_error(req, "AccessDeniedException", payload, 400)
                    return _respond(start_response, error)
                body_out = json.dumps(payload, default=str).encode()
                content = [("Content-Type", "application/x-amz-json-1.1")]
                return _respond(start_response, (200, content, body_out))
        if req.service == "sts" and req.action == "AssumeRole":
            denied = sts.external_id_denial(body)
            if denied is not None:  # AWS: 403 AccessDenied, as for any trust policy refusal
                return _respond(start_response, render_error(req, "AccessDenied", denied, 403))
        fault = self.runtime.take_fault(req.action)
        if fault is not None:
            status = fault.status or default_status(fault.code)
            return _respond(start_response, render_error(req, fault.code, fault.message, status))
        if self.runtime.throttled(req.action):
            code, status = THROTTLE_CODES.get(req.service, DEFAULT_THROTTLE)
            return _respond(start_response, render_error(req, code, "Rate exceeded", status))
        handler = SERVICE_HANDLERS.get(req.service)
        if handler is not None:
            try:
                return _respond(start_response, handler(req))
            except LabAwsError as exc:
                return _respond(
                    start_response,
                    render_error(req, exc.code, exc.message, exc.status, exc.fields),
                )
            except NotImplementedError:
                pass  # fall through to moto
            except Exception as exc:  # never a bare 500 page: an AWS-shaped InternalError
                log.exception("lab handler failed")
                return _respond(start_response, render_error(req, "InternalError", str(exc), 500))
        return self._moto(environ, start_response, req)

    def _moto(
        self, environ: dict[str, Any], start_response: StartResponse, req: AwsRequest
    ) -> Iterable[bytes]:
        """moto, except that its crashes (HTML 500 pages) become AWS-shaped errors."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        try:
            body = b"".join(self.app(environ, capture))
        except Exception:
            log.exception("moto failed on %s %s", req.service, req.action)
            captured = {"status": "500", "headers": [("Content-Type", "text/html")]}
            body = b""
        status, headers = captured["status"], captured["headers"]
        content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if status.startswith("500") and "html" in content_type:
            log.error("moto failed on %s %s", req.service, req.action)
            return _respond(
                start_response,
                render_error(
                    req,
                    "InternalError",
                    f"{req.action} is not supported by the lab (moto failed on it)",
                    500,
                ),
            )
        start_response(status, headers)
        return [body]

    def _control(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        from urllib.parse import parse_qs

        method = environ.get("REQUEST_METHOD", "GET")
        parts = [p for p in environ.get("PATH_INFO", "").split("/")[2:] if p]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            return _json(start_response, 400, {"error": "request body is not valid JSON"})
        handler = CONTROL_ROUTES.get(parts[0]) if parts else None
        if handler is None:
            return _json(start_response, 404, {"error": f"no lab route /_lab/{'/'.join(parts)}"})
        try:
            status, result = handler(method, parts[1:], query, payload)
        except ControlError as exc:
            return _json(start_response, exc.status, {"error": str(exc)})
        except LabAwsError as exc:
            return _json(start_response, exc.status, {"error": exc.message, "code": exc.code})
        except Exception as exc:
            log.error("lab control %s failed: %s", parts, traceback.format_exc())
            return _json(start_response, 500, {"error": f"{type(exc).__name__}: {exc}"})
        return _json(start_response, status, result)


def build_app(root: Path) -> LabMiddleware:
    """Install the lab's moto extensions and return the WSGI application."""
    root.mkdir(parents=True, exist_ok=True)
    runtime = LabRuntime(root)
    set_runtime(runtime)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from ec2backup_lab import control, ebsdirect, ec2ext, s3ext

    ec2ext.install()
    s3ext.install()
    sts.install()
    s3ext.set_restore_reads(runtime.s3_restore_reads)  # the default or the saved setting
    ebsdirect.install(SERVICE_HANDLERS)
    control.install(CONTROL_ROUTES)
    from ec2backup_lab import baseline

    baseline.provision_all()
    return LabMiddleware(DomainDispatcherApplication(create_backend_app), runtime)


class LabServer:
    """The lab endpoint, on a background thread (`start`) or in the foreground (`serve_forever`)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self.app = build_app(root)
        self._server = make_server(
            host, port, self.app, threaded=True, request_handler=MotoRequestHandler
        )
        self.host, self.port = (
            str(self._server.server_address[0]),
            int(self._server.server_address[1]),
        )
        self.url = f"http://{self.host}:{self.port}"
        get_runtime().endpoint_url = self.url
        self._thread: threading.Thread | None = None

    def start(self) -> LabServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        from ec2backup_lab import control

        control.shutdown()
        self._server.shutdown()
        if self._thread:
            self._thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ec2backup lab AWS endpoint")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--temporal-address", default="")
    parser.add_argument("--snapshot-pending-seconds", type=float, default=None)
    parser.add_argument("--role-session-seconds", type=float, default=None)
    parser.add_argument("--start-snapshot-unknown-seconds", type=float, default=None)
    parser.add_argument("--enforce-iam", action="store_true")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--timing-scale", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = LabServer(args.dir.resolve(), args.host, args.port)
    runtime = get_runtime()
    settings: dict[str, Any] = {}
    if args.temporal_address:
        settings["temporal_address"] = args.temporal_address
    if args.snapshot_pending_seconds is not None:
        settings["snapshot_pending_seconds"] = args.snapshot_pending_seconds
    if args.role_session_seconds is not None:
        settings["role_session_seconds"] = args.role_session_seconds
    if args.start_snapshot_unknown_seconds is not None:
        settings["start_snapshot_unknown_seconds"] = args.start_snapshot_unknown_seconds
    if args.enforce_iam:
        settings["enforce_iam"] = True
    if args.timing:
        settings["timing"] = True
    if args.timing_scale is not None:
        settings["timing_scale"] = args.timing_scale
    if settings:
        runtime.apply_config(settings)

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"lab endpoint listening on {server.url}", flush=True)
    server.serve_forever()
    from ec2backup_lab import control

    control.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
