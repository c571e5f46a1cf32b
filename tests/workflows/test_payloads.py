"""Temporal payloads are encrypted (ec2backup.payloads): the service's history of a session
holds none of the instance's tag values, the role ARN or the repository URL; the codec server
shows them to the `temporal` CLI; plain JSON typed into `temporal workflow start` still works;
a rotated key keeps old histories readable (acceptance of issue 16, payloads)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from session_helpers import ACCOUNT_B, REPO_ROOT, ROLE_B, Workbench, wait_for

TOKEN = "codec-test-token"
ENCRYPTED = base64.b64encode(b"binary/encrypted").decode()
UI_ORIGIN = "http://localhost:8233"


def readable(history: str) -> str:
    """Everything a reader of `temporal workflow show -o json` can read: the JSON itself and
    every payload's data base64-decoded (the CLI prints payloads as base64)."""
    texts = [history]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    texts.append(base64.b64decode(value).decode("utf-8", "replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history))
    return "\n".join(texts)


def temporal(wb: Workbench, *args: str) -> str:
    """`temporal ARGS -o json` against the lab's dev server; stdout."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            *args,
            "--address",
            wb.lab.temporal_address,
            "--namespace",
            "default",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def codec_url(wb: Workbench) -> Iterator[str]:
    """`ec2backup codec-server --port 0` with a bearer token from the configuration."""
    env = {**wb.env, "EC2BACKUP_CODEC_SERVER__TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ec2backup.cli", "codec-server", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("codec server on http://"), line
        yield line.split()[3]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def session(wb: Workbench) -> dict[str, Any]:
    """An image-level session of an instance in the production account (role ARN, repository,
    a tag value that must never reach the Temporal service in clear)."""
    secret_tag = f"payroll-{uuid.uuid4().hex[:10]}"
    inst = wb.seed(
        "--account",
        ACCOUNT_B,
        "--volumes",
        "1",
        "--size-gib",
        "1",
        "--fill",
        "0.02",
        "--tag",
        f"CostCenter={secret_tag}",
    )
    repo = wb.new_repo()
    result = wb.backup(inst["instance_id"], "--account-role-arn", ROLE_B, "--repo", repo)
    return {"session_id": result.session_id, "tag": secret_tag, "repo": repo, "inst": inst}


def test_history_is_encrypted_and_the_codec_server_shows_it(
    wb: Workbench, session: dict[str, Any], codec_url: str
) -> None:
    sid = session["session_id"]
    secrets = [session["tag"], ROLE_B, session["repo"]]
    raw = readable(temporal(wb, "workflow", "show", "-w", sid))
    assert ENCRYPTED in raw  # the payloads are there, as ciphertext
    for value in secrets:
        assert value not in raw, f"{value} in the raw history"
    # Failure texts and stack traces travel encrypted too (the failure converter).
    decoded = readable(
        temporal(
            wb,
            "workflow",
            "show",
            "-w",
            sid,
            "--codec-endpoint",
            codec_url,
            "--codec-auth",
            f"Bearer {TOKEN}",
        )
    )
    for value in secrets:
        assert value in decoded, f"{value} not shown through the codec server"
    assert ENCRYPTED not in decoded
    # The product's own commands read the same history with the keys.
    shown = wb.cli_json("session", "show", sid, "--json")
    assert shown["status"] == "COMPLETED"
    # The agent got its keys from its session secret, named on its command line.
    commands = [p.read_text() for p in (Path(wb.lab.dir) / "instances").glob("*/agent.cmd")]
    assert any("--session-secret" in c for c in commands), commands


def test_codec_server_wants_its_token_and_answers_the_web_ui(codec_url: str) -> None:
    body = json.dumps({"payloads": []}).encode()
    req = urllib.request.Request(f"{codec_url}/decode", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert denied.value.code == 401
    preflight = urllib.request.Request(
        f"{codec_url}/decode",
        method="OPTIONS",
        headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    with urllib.request.urlopen(preflight, timeout=10) as r:
        assert r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    plain = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}}
    plain["data"] = base64.b64encode(b'"hello"').decode()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    enc = urllib.request.Request(
        f"{codec_url}/encode",
        data=json.dumps({"payloads": [plain]}).encode(),
        method="POST",
        headers=auth,
    )
    with urllib.request.urlopen(enc, timeout=10) as r:
        encoded = json.load(r)
    assert encoded["payloads"][0]["metadata"]["encoding"] == ENCRYPTED
    dec = urllib.request.Request(
        f"{codec_url}/decode", data=json.dumps(encoded).encode(), method="POST", headers=auth
    )
    with urllib.request.urlopen(dec, timeout=10) as r:
        assert json.load(r)["payloads"] == [plain]


def test_a_session_started_with_plain_json_from_the_temporal_cli(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")
    sid = f"backup-cli-{uuid.uuid4().hex[:10]}"
    wb.sessions.append(sid)
    temporal(
        wb,
        "workflow",
        "start",
        "--type",
        "BackupSession",
        "--task-queue",
        "ec2backup",
        "-w",
        sid,
        "--input",
        json.dumps({"instance_id": inst["instance_id"], "region": "us-east-1"}),
    )
    result = wb.session_result(sid, timeout=180)
    assert result["status"] == "completed", result
    assert len(result["snapshot_ids"]) == 2


def test_a_rotated_key_encodes_new_runs_and_old_histories_still_decode(
    wb: Workbench, session: dict[str, Any]
) -> None:
    before = wb.cli("doctor", "--verbose", check=False).stdout
    rotated = wb.cli("setup", "--rotate-payload-key").stdout
    line = next(x for x in rotated.splitlines() if x.startswith("payload key: rotated"))
    new_id = line.split("current ")[1].split(";")[0]
    assert new_id not in before
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")
    # a new process encodes with the new key; the running orchestrator, holding the old
    # keyring, reloads it on the unknown key id
    fresh = wb.backup(inst["instance_id"])
    raw = json.loads(temporal(wb, "workflow", "show", "-w", fresh.session_id))
    started = raw["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    key_id = base64.b64decode(started["metadata"]["encryption-key-id"]).decode()
    assert key_id == new_id
    # The session before the rotation still reads (its key stays in the keyring).
    old = wb.cli_json("session", "show", session["session_id"], "--json")
    assert old["status"] == "COMPLETED" and old["result"]["restore_point_id"]
    wait_for(lambda: new_id in wb.cli("doctor", "--verbose", check=False).stdout, 30, "doctor")
