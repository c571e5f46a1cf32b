"""Tracing, metrics and logs of every Temporal client and worker (orchestrator, agent, CLI).

`connect_options()` is what `ec2backup.temporal.connect` adds to `Client.connect`: the SDK's
OpenTelemetry interceptor (when an OTLP endpoint is set), the product's worker interceptor and
the process's one `Runtime` (Prometheus, when `--metrics-port` is given). A long-running
process (`ec2backup worker`, `ec2backup agent`) calls `configure()` once, before any client;
a CLI command does not, and gets the tracing of service `ec2backup-cli` only.

Metrics, their names and labels: docs/observability.md.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import temporalio.client
import temporalio.worker
from temporalio import activity, workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

from ec2backup.errors import UserError

# Service names per process (the OpenTelemetry `service.name`; OTEL_SERVICE_NAME wins).
ORCHESTRATOR_SERVICE = "ec2backup-orchestrator"
AGENT_SERVICE = "ec2backup-agent"
CLI_SERVICE = "ec2backup-cli"
# The OTLP transports we ship (the exporter packages in the dependencies); OTLP's default.
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_OTLP_PROTOCOL = "http/protobuf"
LOG_FORMATS = ("text", "json")
TEXT_LOG_FORMAT = "%(asctime)s %(name)s %(message)s"
# The age gauge of the newest good restore point is set again this often, so it grows between
# sessions (the SDK's Prometheus exporter has no callback gauges); well under a scrape interval.
AGE_REFRESH_SECONDS = 5.0
# How long a process that ends waits for its last spans to be exported (a collector that is
# down must not hold up a command for the exporter's own retries).
FLUSH_TIMEOUT_MS = 5000
# The workflow whose completions are counted by outcome and whose restore points are aged.
SESSION_WORKFLOW = "BackupSession"

# The instance the running activity or workflow is about (set by the interceptor below from
# its input): what every log record inside it carries as `instance_id`.
current_instance: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ec2backup_instance_id", default=None
)


@dataclass
class _State:
    service: str = CLI_SERVICE
    configured: bool = False
    runtime: Any = None  # temporalio.runtime.Runtime, once metrics are on
    tracer_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider, once tracing is on
    tracing_interceptor: Any = None
    # (instance id, policy) -> nominal time of its newest completed session's restore point.
    newest_good: dict[tuple[str, str], datetime] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    shut_down: bool = False


_state = _State()


# ---- configuration -------------------------------------------------------------------------
def configure(service: str, metrics_port: int | None = None, log_format: str | None = None) -> None:
    """Set up this process once, before any client: logs, the Runtime (Prometheus on
    `metrics_port`, 0.0.0.0) and tracing. Bad values raise `UserError` naming them."""
    if _state.configured:
        return
    configure_logging(log_format)
    _state.service = service
    if metrics_port is not None:
        _state.runtime = _prometheus_runtime(metrics_port)
        threading.Thread(target=_refresh_ages, daemon=True, name="restore-point-age").start()
    _tracing()  # validates the protocol now, not at the first client
    _state.configured = True


def _prometheus_runtime(port: int) -> Any:
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    if not 0 < port < 65536:
        raise UserError(f"--metrics-port {port}: not a TCP port (1-65535)")
    try:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=f"0.0.0.0:{port}"),
                # Ours instead of the SDK's `temporal-core-sdk` (both would duplicate the label).
                attach_service_name=False,
                global_tags={"service_name": _service_name()},
            )
        )
    except Exception as exc:  # port in use, no permission
        raise UserError(f"--metrics-port {port}: {' '.join(str(exc).split())}") from exc
    # Every client and worker of the process, and any the SDK creates itself, use this one.
    Runtime.set_default(runtime, error_if_already_set=False)
    return runtime


def _service_name() -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or _state.service


def _tracing() -> Any:
    """The TracingInterceptor when an OTLP endpoint is set (created once), else None."""
    if _state.tracing_interceptor is not None:
        return _state.tracing_interceptor
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None  # nothing imported, nothing exported
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_OTLP_PROTOCOL
    ).strip()
    if protocol not in OTLP_PROTOCOLS:
        raise UserError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: not supported "
            f"(one of {', '.join(OTLP_PROTOCOLS)})"
        )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    exporter: Any
    # Both exporters read the endpoint, headers, timeout and TLS from the OTEL_* variables.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        exporter = HTTPSpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: _service_name()}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _state.tracer_provider = provider
    # Sessions are started by schedules and other workflows, without a client span: create
    # workflow spans anyway, or a scheduled night would have none.
    _state.tracing_interceptor = TracingInterceptor(
        provider.get_tracer("ec2backup"), always_create_workflow_spans=True
    )
    return _state.tracing_interceptor


def connect_options() -> dict[str, Any]:
    """Extra `Client.connect` keyword arguments: interceptors (tracing; the product's on a
    configured worker process) and the process's Runtime when metrics are on."""
    interceptors: list[Any] = []
    tracing = _tracing()
    if tracing is not None:
        interceptors.append(tracing)
    if _state.configured:
        interceptors.append(ProductInterceptor())
    options: dict[str, Any] = {}
    if interceptors:
        options["interceptors"] = interceptors
    if _state.runtime is not None:
        options["runtime"] = _state.runtime
    return options


def shutdown() -> None:
    """Flush and stop the span exporter (idempotent): called when a worker or command ends,
    before the process leaves without finalization (`ec2backup.cli.main`)."""
    if _state.shut_down:
        return
    _state.shut_down = True
    provider = _state.tracer_provider
    if provider is not None:
        provider.force_flush(timeout_millis=FLUSH_TIMEOUT_MS)
        provider.shutdown()


# ---- metrics ---------------------------------------------------------------------------------
def record_transfer(blocks_read: int, bytes_read: int, bytes_stored: int, seconds: float) -> None:
    """One transfer range done on the agent (inside its activity: the SDK's activity meter,
    labelled with the activity and task queue; a no-op without a metrics port)."""
    meter = activity.metric_meter()
    meter.create_counter("ec2backup_agent_bytes_read", "bytes read from worker volumes", "By").add(
        bytes_read
    )
    meter.create_counter(
        "ec2backup_agent_bytes_stored", "new bytes stored in the repository (after dedup)", "By"
    ).add(bytes_stored)
    meter.create_counter("ec2backup_agent_blocks_read", "blocks read", "{block}").add(blocks_read)
    if seconds > 0:
        meter.create_gauge_float(
            "ec2backup_agent_blocks_per_second", "blocks read per second, last range", "{block}/s"
        ).set(blocks_read / seconds)


def _record_session(info: workflow.Info, args: Any, outcome: str, output: Any) -> None:
    """A BackupSession ended (never during replay: the workflow meter skips replays, and the
    age table is written only when not replaying)."""
    req = args[0] if args else None
    policy = str(getattr(req, "policy_name", "") or "adhoc")
    instance = str(getattr(req, "instance_id", "") or "")
    meter = workflow.metric_meter().with_additional_attributes({"policy": policy})
    meter.create_counter("ec2backup_sessions", "backup sessions ended, by outcome").add(
        1, {"outcome": outcome}
    )
    volumes = list(getattr(output, "volumes", None) or [])
    if outcome != "completed":
        return
    read = sum(v.bytes_read for v in volumes)
    stored = sum(v.bytes_stored for v in volumes)
    blocks = sum(v.blocks_read for v in volumes)
    meter.create_counter("ec2backup_bytes_read", "bytes read by completed sessions", "By").add(read)
    meter.create_counter(
        "ec2backup_bytes_stored", "new bytes stored by completed sessions (after dedup)", "By"
    ).add(stored)
    meter.create_counter("ec2backup_blocks_read", "blocks read by completed sessions").add(blocks)
    per_instance = {"instance_id": instance}
    seconds = (workflow.now() - info.start_time).total_seconds()
    if blocks and seconds > 0:
        meter.create_gauge_float(
            "ec2backup_blocks_per_second", "blocks read per second of the last session", "{block}/s"
        ).set(blocks / seconds, per_instance)
    if stored:
        meter.create_gauge_float(
            "ec2backup_dedup_ratio", "bytes read / bytes stored of the last session"
        ).set(read / stored, per_instance)
    if instance and not workflow.unsafe.is_replaying():
        when = restore_point_time(req, info.start_time)
        with _state.lock:
            key = (instance, policy)
            previous = _state.newest_good.get(key)
            if previous is None or when > previous:
                _state.newest_good[key] = when
        _set_ages()


def restore_point_time(req: Any, started: datetime) -> datetime:
    """The nominal time of a session's restore point: its snapshot set's (carried through
    continue-as-new), the back-dated `as_of`, else when the session's run started (the set is
    taken first); always timezone-aware (naive values are UTC)."""
    carry = getattr(req, "carry", None)
    snapshot_set = getattr(carry, "snapshot_set", None)
    when = getattr(snapshot_set, "created", None) or getattr(req, "as_of", None) or started
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _set_ages() -> None:
    runtime = _state.runtime
    if runtime is None:
        return
    gauge = runtime.metric_meter.create_gauge_float(
        "ec2backup_restore_point_age_seconds",
        "seconds since the newest restore point of a completed session (instance, policy)",
        "s",
    )
    now = datetime.now(UTC)
    with _state.lock:
        ages = {k: (now - t).total_seconds() for k, t in _state.newest_good.items()}
    for (instance, policy), age in ages.items():
        gauge.set(age, {"instance_id": instance, "policy": policy})


def _refresh_ages() -> None:
    while True:
        time.sleep(AGE_REFRESH_SECONDS)
        try:
            _set_ages()
        except Exception as exc:  # a metrics hiccup must not stop the refresher
            logging.getLogger("ec2backup.observability").warning("age gauge: %s", exc)


# ---- the product's interceptor -------------------------------------------------------------
def instance_of(arg: Any) -> str | None:
    """The instance an activity or workflow input is about: its `instance_id`, or that of one
    of its fields (a snapshot set, a plan), one level down."""
    value = getattr(arg, "instance_id", None)
    if isinstance(value, str) and value:
        return value
    for name in getattr(type(arg), "model_fields", {}) or {}:
        inner = getattr(getattr(arg, name, None), "instance_id", None)
        if isinstance(inner, str) and inner:
            return inner
    return None


class _ActivityInbound(temporalio.worker.ActivityInboundInterceptor):
    async def execute_activity(self, input: temporalio.worker.ExecuteActivityInput) -> Any:
        # Set here, on the event loop: the SDK copies this context into the thread that runs
        # a sync activity (worker/_activity.py), so its log records see it too.
        token = current_instance.set(instance_of(input.args[0]) if input.args else None)
        try:
            return await self.next.execute_activity(input)
        finally:
            current_instance.reset(token)


class _WorkflowInbound(temporalio.worker.WorkflowInboundInterceptor):
    async def execute_workflow(self, input: temporalio.worker.ExecuteWorkflowInput) -> Any:
        current_instance.set(instance_of(input.args[0]) if input.args else None)
        info = workflow.info()
        if info.workflow_type != SESSION_WORKFLOW:
            return await self.next.execute_workflow(input)
        try:
            output = await self.next.execute_workflow(input)
        except workflow.ContinueAsNewError:
            raise  # the same session goes on
        except FailureError as exc:
            # What fails (or cancels) the workflow; any other exception fails only the
            # workflow task, which the SDK retries: not an outcome.
            cancelled = is_cancelled_exception(exc)
            _record_safely(info, input.args, "cancelled" if cancelled else "failed", None)
            raise
        _record_safely(info, input.args, "completed", output)
        return output


def _record_safely(info: workflow.Info, args: Any, outcome: str, output: Any) -> None:
    """Metrics never change a session's result: an error here would fail its workflow task
    over and over."""
    try:
        _record_session(info, args, outcome, output)
    except Exception as exc:
        workflow.logger.warning("session metrics not recorded: %s", exc)


class ProductInterceptor(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """On every worker of a configured process (a client interceptor that is also a worker
    interceptor applies to the client's workers): the instance id of each activity and
    workflow for the logs, and the session outcomes and restore point ages for the metrics."""

    def intercept_activity(
        self, next: temporalio.worker.ActivityInboundInterceptor
    ) -> temporalio.worker.ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[temporalio.worker.WorkflowInboundInterceptor]:
        return _WorkflowInbound


# ---- logs ----------------------------------------------------------------------------------
def configure_logging(log_format: str | None = None) -> None:
    """Root logging at INFO on stderr, as text or JSON lines (`--log-format`, else
    EC2BACKUP_LOG_FORMAT, else text); every record carries the Temporal context."""
    chosen = (log_format or os.environ.get("EC2BACKUP_LOG_FORMAT") or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise UserError(f"--log-format {chosen!r}: not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TemporalContextFilter())
    handler.setFormatter(
        JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# Record attributes the context filter sets (None when not known).
CONTEXT_FIELDS = ("workflow_id", "run_id", "workflow_type", "activity_type", "instance_id")


class TemporalContextFilter(logging.Filter):
    """Adds workflow id, run id, workflow type, activity type and instance id to a record
    emitted inside an activity (any logger) or a workflow; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        values: dict[str, str | None] = dict.fromkeys(CONTEXT_FIELDS)
        if activity.in_activity():
            info = activity.info()
            values.update(
                workflow_id=info.workflow_id,
                run_id=info.workflow_run_id,
                workflow_type=info.workflow_type,
                activity_type=info.activity_type,
            )
        elif workflow.in_workflow():
            winfo = workflow.info()
            values.update(
                workflow_id=winfo.workflow_id,
                run_id=winfo.run_id,
                workflow_type=winfo.workflow_type,
            )
        values["instance_id"] = current_instance.get()
        for name, value in values.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the Temporal
    context (TemporalContextFilter) where known, and the exception text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
