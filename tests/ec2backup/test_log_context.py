"""The log record context (filter), the JSON formatter and the settings' validation."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from ec2backup import observability
from ec2backup.errors import UserError
from ec2backup.models.session import SnapshotInstanceInput


def formatted(record_logger: logging.Logger, emit: Any) -> dict[str, Any]:
    """Run `emit()` with a JSON handler (the product's filter and formatter) on the logger."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(observability.TemporalContextFilter())
    handler.setFormatter(observability.JsonFormatter())
    record_logger.addHandler(handler)
    record_logger.setLevel(logging.INFO)
    try:
        emit()
    finally:
        record_logger.removeHandler(handler)
    (line,) = out.getvalue().splitlines()
    return dict(json.loads(line))


def test_outside_temporal_no_context() -> None:
    log = logging.getLogger("ec2backup.test.plain")
    record = formatted(log, lambda: log.info("volume %s deleted", "vol-1"))
    assert record["message"] == "volume vol-1 deleted"
    assert record["logger"] == "ec2backup.test.plain" and record["level"] == "info"
    assert not set(observability.CONTEXT_FIELDS) & set(record)


def test_inside_an_activity_any_logger_carries_the_context() -> None:
    log = logging.getLogger("ec2backup.test.activity")
    env = ActivityEnvironment()

    def body() -> dict[str, Any]:
        token = observability.current_instance.set("i-0123")
        try:
            return formatted(log, lambda: log.info("snapshot created"))
        finally:
            observability.current_instance.reset(token)

    record = env.run(body)
    info = env.info
    assert record["workflow_id"] == info.workflow_id
    assert record["run_id"] == info.workflow_run_id
    assert record["activity_type"] == info.activity_type
    assert record["instance_id"] == "i-0123"


def test_exception_text_in_the_json_line() -> None:
    log = logging.getLogger("ec2backup.test.exc")

    def emit() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    record = formatted(log, emit)
    assert "ValueError: boom" in record["exception"]


def test_instance_of_an_input_or_its_fields() -> None:
    direct = SnapshotInstanceInput(session_id="s", instance_id="i-1", region="us-east-1")
    assert observability.instance_of(direct) == "i-1"
    assert observability.instance_of(object()) is None


@pytest.mark.parametrize("bad", ["xml", "JSONL"])
def test_unknown_log_format_is_refused(bad: str) -> None:
    with pytest.raises(UserError, match="--log-format"):
        observability.configure_logging(bad)


def test_unknown_otlp_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(UserError, match="OTEL_EXPORTER_OTLP_PROTOCOL 'http/json'"):
        observability._tracing()


def test_without_an_endpoint_nothing_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert observability._tracing() is None
    assert observability.connect_options() == {}
