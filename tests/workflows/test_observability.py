"""Observability of one image-level session (issue 16): the orchestrator runs with
`--metrics-port`, `--log-format json` and an OTLP endpoint pointing at an in-test collector;
after one session a scrape shows the product's counters and the SDK's metrics, spans of the
session's workflow and activities arrived, and JSON log lines carry the Temporal context.
Bad observability settings fail at once with one line."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from session_helpers import REPO_ROOT, Orchestrator, Session, Workbench, env_for, wait_for

from ec2backup.observability import AGE_REFRESH_SECONDS


class TraceCollector:
    """An OTLP/HTTP trace receiver: every span of every export, flattened, with its service."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                collector.spans.append(
                                    {
                                        "name": span.name,
                                        "service": resource.get("service.name"),
                                        "attributes": {
                                            a.key: a.value.string_value for a in span.attributes
                                        },
                                    }
                                )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_workflow(self, workflow_id: str) -> list[dict[str, Any]]:
        with self.lock:
            spans = list(self.spans)
        return [s for s in spans if s["attributes"].get("temporalWorkflowID") == workflow_id]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


METRICS_PORT = free_port()
# A batch delay no command outlives: its spans leave only through the flush at exit.
LONG_BATCH_DELAY_MS = 600_000


@pytest.fixture(scope="module")
def collector() -> Iterator[TraceCollector]:
    c = TraceCollector()
    yield c
    c.server.shutdown()


@pytest.fixture(scope="module")
def wb(lab: Any, collector: TraceCollector) -> Iterator[Workbench]:
    """The module's orchestrator, observable (the conftest's `wb`, with more options); the
    CLI commands get the same OTLP endpoint."""
    env = env_for(
        lab,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": None,  # the default: http/protobuf
            "OTEL_SERVICE_NAME": None,
            # Spans leave within a second (the SDK's batch default is 5 s).
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        },
    )
    orchestrator = Orchestrator(
        env,
        Path(lab.dir) / "orchestrator-observability.log",
        args=("--metrics-port", str(METRICS_PORT), "--log-format", "json"),
    )
    bench = Workbench(lab=lab, env=env, name="observability", orchestrator=orchestrator)
    bench.cli("lab", "fault", "--clear")
    orchestrator.start()
    try:
        yield bench
    finally:
        try:
            bench.terminate_open_sessions()
        finally:
            orchestrator.stop()


@pytest.fixture(scope="module")
def session(wb: Workbench) -> tuple[dict[str, Any], Session]:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05")
    return inst, wb.backup(inst["instance_id"], "--repo", wb.new_repo())


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {metric name: [(labels, value)]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m:
            continue
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
        labels = dict(pairs)
        assert len(labels) == len(pairs), f"a label twice (Prometheus rejects it): {line}"
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def total(metrics: dict[str, Any], name: str, **labels: str) -> float:
    samples = metrics.get(name) or metrics.get(f"{name}_total") or []
    return sum(v for lab, v in samples if all(lab.get(k) == want for k, want in labels.items()))


def test_scrape_after_a_session(session: tuple[dict[str, Any], Session]) -> None:
    inst, sess = session
    assert sess.result is not None
    read = sum(v["bytes_read"] for v in sess.result["volumes"])
    stored = sum(v["bytes_stored"] for v in sess.result["volumes"])
    assert read > 0 and stored > 0

    def after_session() -> dict[str, Any] | None:
        metrics = scrape()
        return metrics if total(metrics, "ec2backup_sessions", outcome="completed") else None

    metrics = wait_for(after_session, 15, "the completed session in the metrics")
    # What the session reported, counted once.
    assert total(metrics, "ec2backup_bytes_read", policy="adhoc") == read
    assert total(metrics, "ec2backup_bytes_stored", policy="adhoc") == stored
    assert total(metrics, "ec2backup_blocks_read") > 0
    assert total(metrics, "ec2backup_blocks_per_second", instance_id=inst["instance_id"]) > 0
    ratio = total(metrics, "ec2backup_dedup_ratio", instance_id=inst["instance_id"])
    assert ratio == pytest.approx(read / stored)
    # The SDK's own metrics share the endpoint.
    assert total(metrics, "temporal_workflow_completed", workflow_type="BackupSession") >= 1
    assert any(name.startswith("temporal_activity_execution_latency") for name in metrics)
    # The age of the newest good restore point grows between sessions.
    age = "ec2backup_restore_point_age_seconds"
    first = total(metrics, age, instance_id=inst["instance_id"], policy="adhoc")
    assert first >= 0 and metrics.get(age)
    later = wait_for(
        lambda: (a := total(scrape(), age, instance_id=inst["instance_id"])) > first and a,
        AGE_REFRESH_SECONDS * 3,
        "the restore point age to grow",
    )
    assert later > first


def test_spans_of_the_session(
    collector: TraceCollector, session: tuple[dict[str, Any], Session]
) -> None:
    _, sess = session

    def names() -> set[str] | None:
        found = {(s["service"], s["name"]) for s in collector.of_workflow(sess.session_id)}
        wanted = {
            ("ec2backup-orchestrator", "RunWorkflow:BackupSession"),
            ("ec2backup-orchestrator", "RunActivity:snapshot_instance"),
            ("ec2backup-orchestrator", "RunActivity:commit_restore_point"),
            ("ec2backup-orchestrator", "StartActivity:snapshot_instance"),
            ("ec2backup-cli", "StartWorkflow:BackupSession"),
        }
        return {n for _, n in found} if wanted <= found else None

    seen = wait_for(names, 15, f"spans of {sess.session_id}")
    print(f"spans of the session: {sorted(seen)}")


def test_json_logs_carry_the_temporal_context(
    wb: Workbench, session: tuple[dict[str, Any], Session]
) -> None:
    inst, sess = session
    records = []
    for line in wb.orchestrator.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every structured line is one JSON object
    created = [
        r
        for r in records
        if r.get("workflow_id") == sess.session_id and r.get("activity_type") == "snapshot_instance"
    ]
    assert created, f"no snapshot_instance record of {sess.session_id} among {len(records)}"
    (record,) = [r for r in created if r["logger"] == "ec2backup.snapshots"]
    assert "created" in record["message"], record
    assert record["instance_id"] == inst["instance_id"]
    assert record["run_id"] and record["workflow_type"] == "BackupSession"
    released = [
        r
        for r in records
        if r.get("workflow_id") == sess.session_id and r.get("activity_type") == "release_worker"
    ]
    assert any("terminated" in r["message"] for r in released), released


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--metrics-port", "0"], {}, "--metrics-port"),
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_bad_settings_fail_with_one_line(
    wb: Workbench, args: list[str], env: dict[str, str], named: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "worker", "--no-schedules", *args],
        env={**wb.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr


def test_metrics_port_in_use_fails_with_one_line(wb: Workbench) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "worker", "--metrics-port", str(METRICS_PORT)],
        env=wb.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--metrics-port {METRICS_PORT}" in lines[0], proc.stderr
    assert time.monotonic() - started < 30


def test_agent_metrics_and_json_logs(wb: Workbench, tmp_path: Path) -> None:
    """`ec2backup agent --metrics-port P --log-format json`, polling a queue of its own:
    the SDK's metrics of service ec2backup-agent on the endpoint, JSON log lines, a clean stop."""
    port = free_port()
    log_path = tmp_path / "agent.log"
    env = {**wb.env, "EC2BACKUP_INSTANCE_ID": "i-0observability"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ec2backup.cli",
                "agent",
                "--task-queue",
                "ec2backup-host-{instance_id}",
                "--metrics-port",
                str(port),
                "--log-format",
                "json",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        wait_for(
            lambda: b"agent polling task queue" in log_path.read_bytes() or proc.poll() is not None,
            60,
            "the agent to poll",
        )
        assert proc.poll() is None, log_path.read_text()

        def pollers() -> dict[str, Any] | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            return {"text": text} if "temporal_" in text else None

        text = wait_for(pollers, 15, "the agent's SDK metrics")["text"]
        assert 'service_name="ec2backup-agent"' in text
        assert 'task_queue="ec2backup-host-i-0observability"' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, log_path.read_text()
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    polling = [json.loads(line) for line in lines if "agent polling task queue" in line]
    assert polling and polling[0]["logger"] == "ec2backup.agent", lines


def test_a_short_command_flushes_its_spans_at_exit(
    wb: Workbench, collector: TraceCollector, session: tuple[dict[str, Any], Session]
) -> None:
    """`session show` ends long before its batch would be sent: the span arrives only because
    the command flushes at exit (it leaves without running atexit handlers)."""
    _, sess = session

    def queries() -> list[dict[str, Any]]:
        return [
            s
            for s in collector.of_workflow(sess.session_id)
            if s["service"] == "ec2backup-cli" and s["name"] == "QueryWorkflow:progress"
        ]

    before = len(queries())
    proc = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "session", "show", sess.session_id, "--json"],
        env={**wb.env, "OTEL_BSP_SCHEDULE_DELAY": str(LONG_BATCH_DELAY_MS)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(queries()) == before + 1
