"""`ec2backup codec-server`: the Temporal codec server protocol over HTTP, so the Web UI and
`temporal ... --codec-endpoint URL` show our encrypted payloads (ec2backup.payloads) in clear.

    POST /encode   body: {"payloads": [Payload as proto JSON, ...]} -> the same, encoded
    POST /decode   body: the same shape                                -> decoded
    OPTIONS        CORS preflight for the configured Web UI origins

The endpoint may sit under any path prefix (`--codec-endpoint http://host:8081/ns` calls
`/ns/decode`). With a token configured every request must carry `Authorization: Bearer T`
(the CLI's `--codec-auth`, the Web UI's "pass access token"). Whoever can call /decode reads
every payload: keep it on loopback or behind the same access control as the Web UI.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from ec2backup import payloads
from ec2backup.config import CodecServerSettings
from ec2backup.errors import UserError

log = logging.getLogger("ec2backup.codec")

# Largest request body accepted: a history's page of payloads, with room (the server reads it
# whole into memory).
MAX_BODY_BYTES = 64 * 1024 * 1024


def resolve_token(settings: CodecServerSettings) -> str | None:
    """The bearer token: `token_secret` (a Secrets Manager secret in the home Region) or
    `token`; None: no authentication (loopback use)."""
    if settings.token_secret:
        from ec2backup import aws, installation

        try:
            value = aws.client("secretsmanager", installation.home_region()).get_secret_value(
                SecretId=settings.token_secret
            )
        except Exception as exc:
            raise UserError(
                f"codec_server.token_secret {settings.token_secret}: {' '.join(str(exc).split())}"
            ) from exc
        return str(value["SecretString"]).strip()
    return settings.token


def _transform(body: bytes, op: str) -> bytes:
    request = Payloads()
    json_format.Parse(body or b"{}", request)
    items = list(request.payloads)
    out = payloads.encode_all(items) if op == "encode" else payloads.decode_all(items)
    return json_format.MessageToJson(Payloads(payloads=out)).encode()


def make_handler(settings: CodecServerSettings, token: str | None) -> type[BaseHTTPRequestHandler]:
    origins = set(settings.cors_origins)

    class Handler(BaseHTTPRequestHandler):
        server_version = "ec2backup-codec"

        def _cors(self) -> None:
            origin = self.headers.get("Origin")
            if origin and (origin in origins or "*" in origins):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Vary", "Origin")
                self.send_header("Access-Control-Allow-Credentials", "true")

        def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._reply(status, json.dumps({"message": message}).encode())

        def do_OPTIONS(self) -> None:
            self.send_response(200)
            self._cors()
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header(
                "Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization"
            )
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            op = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if op not in ("encode", "decode"):
                self._error(404, f"no such endpoint {self.path} (POST .../encode or .../decode)")
                return
            if token is not None:
                sent = self.headers.get("Authorization", "")
                if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                    self._error(401, "a bearer token is required")
                    return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._error(413, f"request larger than {MAX_BODY_BYTES} bytes")
                return
            try:
                body = _transform(self.rfile.read(length), op)
            except json_format.ParseError as exc:
                self._error(400, f"not a Payloads JSON document: {exc}")
                return
            except UserError as exc:
                self._error(400, str(exc))
                return
            self._reply(200, body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(settings: CodecServerSettings, port: int | None = None) -> ThreadingHTTPServer:
    """Bind the server (port 0: any free port); `serve_forever()` runs it."""
    payloads.keyring()  # fail now, in one line, if this process cannot read the keys
    token = resolve_token(settings)
    bind_port = settings.port if port is None else port
    try:
        return ThreadingHTTPServer((settings.host, bind_port), make_handler(settings, token))
    except OSError as exc:
        raise UserError(
            f"codec server: cannot listen on {settings.host}:{bind_port}: {exc}"
        ) from None


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="codec-server", daemon=True)
    thread.start()
    return thread
