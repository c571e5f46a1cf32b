"""`ec2backup codec-server`: decode encrypted Temporal payloads for the Web UI and CLI."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import typer


def register(app: typer.Typer) -> None:
    @app.command("codec-server")
    def codec_server(
        port: int = typer.Option(
            None, "--port", min=0, max=65535, help="Port (default codec_server.port, 8081)"
        ),
        host: str = typer.Option(
            None, "--host", help="Interface (default codec_server.host, 127.0.0.1)"
        ),
    ) -> None:
        """Serve the Temporal codec server protocol (POST /encode, /decode) with the
        installation's payload keys: point the Web UI's codec endpoint or `temporal ...
        --codec-endpoint` at it."""
        from ec2backup import codecserver, config

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("botocore").setLevel(logging.WARNING)  # not each credentials lookup
        settings = config.load().codec_server
        if host:
            settings = settings.model_copy(update={"host": host})
        server = codecserver.make_server(settings, port)
        bound_host, bound_port = server.server_address[:2]
        auth = "bearer token required" if codecserver.resolve_token(settings) else "no token"
        print(f"codec server on http://{bound_host!s}:{bound_port} ({auth})", flush=True)

        def stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        print("codec server stopped", file=sys.stderr)
