"""Helpers for the BackupSession integration tests: one orchestrator subprocess, the CLI with
the session settings, seeding, sessions, Temporal queries, restores and lab metrics.

Everything goes through the product's own entry points (`ec2backup ...` subprocesses, boto3
against the lab, a Temporal client with the pydantic converter); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
ACCOUNT_A = "123456789012"  # the backup account (the lab's default credentials)
ACCOUNT_B = "222222222222"  # a production account, reached by sts:AssumeRole
ROLE_B = f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup"
BLOCK = 512 * 1024
GIB = 1024**3
RANGE_BLOCKS = 512  # 256 MiB transfer ranges: several per volume, so mid-transfer exists
RANGE_BYTES = RANGE_BLOCKS * BLOCK
BUCKET = "ec2backup-workflow-tests"
# What the orchestrator (and the CLI) get on top of the lab's environment.
SESSION_ENV = {
    "EC2BACKUP_REPO_PASSWORD": "pw",
    "EC2BACKUP_RANGE_BLOCKS": str(RANGE_BLOCKS),
    "EC2BACKUP_HEARTBEAT_TIMEOUT_SECONDS": "10",
    "EC2BACKUP_AGENT_BOOT_TIMEOUT_SECONDS": "60",
}
SESSION_TAG = "ec2backup:session"
# CLI commands that used a Temporal client used to die at interpreter exit with SIGABRT
# ("PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300) or
# SIGSEGV, after their output was complete. `Workbench.cli` tolerates that (and counts it) so
# the other tests measure what they are about; test_cli_exits_cleanly pins the fix.
EXIT_CRASH_CODES = (-6, -11)
EXIT_CRASHES: list[str] = []
ROLE_TAG = "ec2backup:role"

T = TypeVar("T")


def subscribed_queue(wb: Workbench, name: str) -> tuple[str, str]:
    """An SNS topic and an SQS queue subscribed to it, with the queue policy AWS requires for
    SNS to deliver (https://docs.aws.amazon.com/sns/latest/dg/subscribe-sqs-queue-to-sns-topic.html):
    (topic ARN, queue URL)."""
    sns, sqs = wb.client("sns"), wb.client("sqs")
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    allow_topic = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(allow_topic)})
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


def sns_messages(wb: Workbench, queue_url: str, count: int = 1) -> list[dict[str, Any]]:
    """The next `count` SNS envelopes delivered to the queue (each: Subject, Message,
    MessageAttributes); AssertionError when fewer arrive within 30 s."""
    sqs = wb.client("sqs")
    got: list[dict[str, Any]] = []

    def received() -> list[dict[str, Any]] | None:
        out = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10)
        for m in out.get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        return got if len(got) >= count else None

    return wait_for(received, 30, f"{count} SNS message(s) in SQS")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except AssertionError:
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} missing)"


def image_sha256(path: Path) -> str:
    """SHA-256 of a (sparse) image file; holes are hashed as zeros without reading them."""
    zeros = bytes(8 * 1024 * 1024)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                data = size
            while pos < data:  # the hole [pos, data)
                n = min(len(zeros), data - pos)
                digest.update(zeros[:n] if n < len(zeros) else zeros)
                pos += n
            if pos >= size:
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < hole:
                chunk = f.read(min(8 * 1024 * 1024, hole - pos))
                digest.update(chunk)
                pos += len(chunk)
    return digest.hexdigest()


def has_data(path: Path) -> bool:
    """True if the file has any allocated (non-hole) extent with a non-zero byte."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return False
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < hole:
                chunk = f.read(min(8 * 1024 * 1024, hole - pos))
                if chunk.strip(b"\0"):
                    return True
                pos += len(chunk)
    return False


# ---- the orchestrator --------------------------------------------------------------------
class Orchestrator:
    """`ec2backup worker` as a subprocess (its own process group), restartable."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args  # extra `ec2backup worker` options (e.g. --metrics-port)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ec2backup.cli", "worker", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"orchestrator exited:\n{tail(self.log_path)}")
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return b"orchestrator polling task queue" in f.read()

        wait_for(ready, 60, "the orchestrator to poll")

    def stop(self, kill: bool = False) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


# ---- sessions ----------------------------------------------------------------------------
@dataclass
class Session:
    session_id: str
    returncode: int | None = None
    result: dict[str, Any] | None = None
    stdout: str = ""
    stderr: str = ""

    def volume(self, volume_id: str) -> dict[str, Any]:
        assert self.result is not None
        for v in self.result["volumes"]:
            if v["volume_id"] == volume_id:
                return dict(v)
        raise AssertionError(f"{volume_id} not in the result {self.result['volumes']}")


@dataclass
class Workbench:
    """The lab plus the session environment and the module's orchestrator."""

    lab: Any
    env: dict[str, str]
    name: str
    orchestrator: Orchestrator
    sessions: list[str] = field(default_factory=list)
    _repos: int = 0

    # -- CLI ----------------------------------------------------------------------------
    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        if check and args[:1] == ("lab",) and (direct := _lab_direct(self, args, timeout)):
            return direct
        result = subprocess.run(
            [sys.executable, "-m", "ec2backup.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )
        if result.returncode in EXIT_CRASH_CODES and check:
            EXIT_CRASHES.append(" ".join(args[:2]))
            print(f"warning: ec2backup {' '.join(args[:2])} crashed at exit ({result.returncode})")
            result.returncode = 0
        if check and result.returncode != 0:
            raise AssertionError(
                f"ec2backup {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n--- orchestrator log ---\n"
                f"{tail(self.orchestrator.log_path)}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    def client(self, service: str, region: str = REGION, role_arn: str | None = None) -> Any:
        if role_arn is None:
            return self.lab.client(service, region)
        creds = self.lab.client("sts", region).assume_role(
            RoleArn=role_arn, RoleSessionName="ec2backup-tests"
        )["Credentials"]
        return self.lab.client(
            service,
            region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    # -- lab ----------------------------------------------------------------------------
    def lab_call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.lab.aws_url}/_lab/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)

    def seed(self, *args: str) -> dict[str, Any]:
        """`lab seed ARGS` -> the one seeded instance (instance_id, volumes, account)."""
        out = self.cli_json("lab", "seed", *args)
        return dict(out["instances"][0])

    def checksum(self, resource_id: str) -> str:
        return self.cli("lab", "checksum", resource_id).stdout.strip()

    def metrics(self) -> dict[str, Any]:
        return dict(self.lab_call("GET", "metrics"))

    def agent_bytes(self) -> int:
        """What agents read, either way: from worker volumes, and as EBS direct blocks."""
        m = self.metrics()
        return int(m["agent_bytes_read_total"]) + int(m["blocks_served"]) * BLOCK

    def written_bytes(self, volume_id: str) -> int:
        return int(self.lab_call("GET", f"volumes/{volume_id}")["blocks_written"]) * BLOCK

    # -- repositories -------------------------------------------------------------------
    def new_repo(self, *init_args: str, object_lock: bool = False) -> str:
        """A fresh repository under its own prefix of the (versioned) test bucket (`repo init`
        takes `init_args` too); with `object_lock`, of a bucket created with Object Lock."""
        s3 = self.client("s3")
        bucket = f"{BUCKET}-locked" if object_lock else BUCKET
        try:
            if object_lock:
                s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
            else:
                s3.create_bucket(Bucket=bucket)
                s3.put_bucket_versioning(
                    Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
                )
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        self._repos += 1
        url = f"s3://{bucket}/{self.name}-{self._repos}-{uuid.uuid4().hex[:6]}"
        self.cli("repo", "init", "--repo", url, *init_args)
        return url

    def repo_stored_bytes(self, repo: str) -> int:
        """Sum of the current object sizes under the repository's prefix."""
        bucket, _, prefix = repo.removeprefix("s3://").partition("/")
        s3 = self.client("s3")
        total = 0
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/"
        ):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def restore_sha256(self, repo: str, restore_point: str, volume_id: str, out: Path) -> str:
        """`image restore` one volume, then the SHA-256 of the whole image."""
        self.cli(
            "image",
            "restore",
            restore_point,
            "--repo",
            repo,
            "--volume",
            volume_id,
            "--output",
            str(out),
        )
        try:
            return image_sha256(out)
        finally:
            out.unlink()

    def snapshot_of(self, session: Session, volume_id: str) -> str:
        """The snapshot the session took of one of its instance's volumes."""
        assert session.result is not None
        snaps = self.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
        return str(next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume_id))

    def assert_restores(
        self, repo: str, restore_point: str, volume_id: str, snapshot_id: str, out: Path
    ) -> None:
        """The restored image of `volume_id` hashes like `lab checksum SNAPSHOT` (computed by
        the lab at the same time)."""
        with ThreadPoolExecutor(1) as pool:
            expected = pool.submit(self.checksum, snapshot_id)
            got = self.restore_sha256(repo, restore_point, volume_id, out)
            assert got == expected.result(), f"{volume_id} restored != {snapshot_id}"

    def assert_restores_empty(
        self, repo: str, restore_point: str, volume_id: str, snapshot_id: str, out: Path
    ) -> None:
        """For a never-written volume (moto's root): the snapshot lists no block and the
        restored image is all zeros (so both hash like zeros: cheaper than hashing 8 GiB)."""
        ebs = self.client("ebs")
        assert ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"] == []
        self.cli(
            "image",
            "restore",
            restore_point,
            "--repo",
            repo,
            "--volume",
            volume_id,
            "--output",
            str(out),
        )
        try:
            size = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["VolumeSize"] * GIB
            assert out.stat().st_size == size
            assert not has_data(out), f"{volume_id}: restored image is not all zeros"
        finally:
            out.unlink()

    # -- sessions -----------------------------------------------------------------------
    def start_backup(self, instance_id: str, *args: str) -> str:
        out = self.cli("backup", instance_id, *args, timeout=60)
        session_id = out.stdout.splitlines()[0].strip()
        self.sessions.append(session_id)
        return session_id

    def backup(self, instance_id: str, *args: str, check: bool = True) -> Session:
        """`ec2backup backup INSTANCE ARGS --wait`: the session id and its result JSON."""
        t0 = time.monotonic()
        proc = self.cli("backup", instance_id, *args, "--wait", check=False, timeout=400)
        lines = proc.stdout.splitlines()
        if proc.returncode in EXIT_CRASH_CODES and len(lines) > 1:  # output complete: see above
            EXIT_CRASHES.append("backup --wait")
            print(f"warning: ec2backup backup --wait crashed at exit ({proc.returncode})")
            proc.returncode = 0
        session = Session(
            session_id=lines[0].strip() if lines else "",
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
        if session.session_id:
            self.sessions.append(session.session_id)
        if proc.returncode == 0:
            session.result = json.loads("\n".join(lines[1:]))
        print(f"session {session.session_id}: rc={proc.returncode} in {time.monotonic() - t0:.1f}s")
        if check:
            assert proc.returncode == 0 and session.result, self.diagnose(session)
            assert session.result["status"] == "completed", session.result
        return session

    def diagnose(self, session: Session | str) -> str:
        sid = session if isinstance(session, str) else session.session_id
        parts = [f"session {sid}"]
        if isinstance(session, Session):
            parts += [f"stdout:\n{session.stdout}", f"stderr:\n{session.stderr}"]
        parts.append(f"--- orchestrator log ---\n{tail(self.orchestrator.log_path)}")
        for agent_log in sorted((Path(self.lab.dir) / "instances").glob("*/agent.log")):
            if agent_log.stat().st_mtime > time.time() - 300:
                parts.append(f"--- {agent_log} ---\n{tail(agent_log, 15)}")
        parts.append(f"--- aws.log ---\n{tail(Path(self.lab.dir) / 'aws.log', 15)}")
        return "\n".join(parts)

    # -- Temporal -----------------------------------------------------------------------
    def temporal(self, fn: Callable[[Any], Any]) -> Any:
        """Run `await fn(client)` with a fresh client (pydantic converter)."""
        from ec2backup.temporal import connect

        self.lab.use_payload_keys()

        async def go() -> Any:
            client = await connect(self.lab.temporal_address)
            return await fn(client)

        return asyncio.run(go())

    def run_session(self, req: Any) -> Any:
        """Start a BackupSession with `req` (a BackupSessionInput) the way a policy run does
        (search attributes of its policy and instance) and return its BackupSessionOutput; it
        must complete."""
        from ec2backup.models.session import BackupSessionOutput
        from ec2backup.temporal import TASK_QUEUE, search_attributes

        async def go(client: Any) -> BackupSessionOutput:
            out: BackupSessionOutput = await client.execute_workflow(
                "BackupSession",
                req,
                id=f"backup-{uuid.uuid4().hex[:16]}",
                task_queue=TASK_QUEUE,
                result_type=BackupSessionOutput,
                search_attributes=search_attributes("backup", req.policy_name, req.instance_id),
            )
            return out

        out = self.temporal(go)
        assert out.status == "completed"
        return out

    def workflow_ids(self, workflow_type: str, policy: str) -> list[str]:
        """Ids of the `workflow_type` workflows of `policy`, newest first (by search attribute;
        visibility is eventually consistent: poll with `wait_for`)."""

        async def go(client: Any) -> list[str]:
            query = f"WorkflowType = '{workflow_type}' AND PolicyName = '{policy}'"
            return [wf.id async for wf in client.list_workflows(query)]

        return list(self.temporal(go))

    def policy_run(self, name: str, status: str = "COMPLETED") -> dict[str, Any]:
        """`policy run NAME`, then the new run's result once it closed with `status` (every
        instance completed when it COMPLETED; for FAILED, the run's id and failure)."""
        before = set(self.workflow_ids("BackupPolicy", name))
        self.cli("policy", "run", name)
        run_id = wait_for(
            lambda: next(
                (w for w in self.workflow_ids("BackupPolicy", name) if w not in before), None
            ),
            60,
            "the run",
            interval=0.5,
        )
        assert self.wait_status(run_id, timeout=300) == status, self.diagnose(run_id)
        if status != "COMPLETED":
            return {"run_id": run_id, "failure": self.failure(run_id)}

        async def go(client: Any) -> dict[str, Any]:
            return dict(await client.get_workflow_handle(run_id).result())

        result = dict(self.temporal(go))
        assert all(o["status"] == "completed" for o in result["instances"]), result
        return result

    def failure(self, workflow_id: str) -> str:
        """A failed workflow's failure: every message of its cause chain, outermost first."""
        from temporalio.client import WorkflowFailureError

        async def go(client: Any) -> str:
            try:
                await client.get_workflow_handle(workflow_id).result()
            except WorkflowFailureError as exc:
                messages = []
                cause: BaseException | None = exc.cause
                while cause is not None:
                    messages.append(str(cause))
                    cause = getattr(cause, "cause", None)
                return " <- ".join(messages)
            raise AssertionError(f"{workflow_id} did not fail")

        return str(self.temporal(go))

    def progress(self, session_id: str) -> Any:
        from ec2backup.models.session import ProgressInput, SessionProgress

        async def go(client: Any) -> Any:
            return await client.get_workflow_handle(session_id).query(
                "progress", ProgressInput(), result_type=SessionProgress
            )

        return self.temporal(go)

    def status(self, session_id: str) -> str:
        async def go(client: Any) -> str:
            desc = await client.get_workflow_handle(session_id).describe()
            return str(desc.status.name)

        return str(self.temporal(go))

    def wait_status(self, session_id: str, timeout: float) -> str:
        def closed() -> str | None:
            status = self.status(session_id)
            return None if status == "RUNNING" else status

        return wait_for(closed, timeout, f"session {session_id} to close", interval=0.5)

    def session_result(self, session_id: str, timeout: float) -> dict[str, Any]:
        from ec2backup.models.session import BackupSessionOutput

        async def go(client: Any) -> Any:
            handle = client.get_workflow_handle(session_id, result_type=BackupSessionOutput)
            return await asyncio.wait_for(handle.result(), timeout)

        out = self.temporal(go)
        return dict(out.model_dump())

    def wait_transferring(self, session_id: str, min_bytes: int, timeout: float = 90) -> Any:
        """Block until the session is transferring and its agent has read `min_bytes` more."""
        base = self.agent_bytes()

        def ready() -> Any:
            status = self.status(session_id)
            if status != "RUNNING":
                raise AssertionError(f"session ended ({status}) before the transfer was seen")
            p = self.progress(session_id)
            if p.phase == "transferring" and self.agent_bytes() - base >= min_bytes:
                return p
            return None

        try:
            return wait_for(ready, timeout, f"{session_id} to transfer", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(session_id)}") from None

    def terminate_open_sessions(self) -> None:
        async def go(client: Any) -> None:
            for sid in self.sessions:
                handle = client.get_workflow_handle(sid)
                try:
                    desc = await handle.describe()
                    if desc.status.name == "RUNNING":
                        await handle.terminate(reason="test teardown")
                except Exception:  # best effort
                    pass

        self.temporal(go)

    # -- resources ----------------------------------------------------------------------
    def session_instances(
        self, session_id: str, region: str = REGION, role_arn: str | None = None
    ) -> list[dict[str, Any]]:
        ec2 = self.client("ec2", region, role_arn)
        res = ec2.describe_instances(
            Filters=[{"Name": f"tag:{SESSION_TAG}", "Values": [session_id]}]
        )["Reservations"]
        return [i for r in res for i in r["Instances"]]

    def session_volumes(
        self, session_id: str, region: str = REGION, role_arn: str | None = None
    ) -> list[dict[str, Any]]:
        ec2 = self.client("ec2", region, role_arn)
        return list(
            ec2.describe_volumes(Filters=[{"Name": f"tag:{SESSION_TAG}", "Values": [session_id]}])[
                "Volumes"
            ]
        )

    def leftovers(self, session_id: str) -> dict[str, Any]:
        """What a closed session must not leave: live workers, volumes, the session secret."""
        from ec2backup.workers import session_secret_name

        live = [
            (i["InstanceId"], i["State"]["Name"])
            for i in self.session_instances(session_id)
            if i["State"]["Name"] != "terminated"
        ]
        volumes = [v["VolumeId"] for v in self.session_volumes(session_id)]
        sm = self.client("secretsmanager")
        try:
            sm.describe_secret(SecretId=session_secret_name(session_id))
            secret = True
        except ClientError:
            secret = False
        running_agents = {
            iid
            for iid in self.metrics()["agents"]
            if iid in {i["InstanceId"] for i in self.session_instances(session_id)}
        }
        out: dict[str, Any] = {}
        if live:
            out["instances"] = live
        if volumes:
            out["volumes"] = volumes
        if secret:
            out["secret"] = session_secret_name(session_id)
        if running_agents:
            out["agents"] = sorted(running_agents)
        return out


# ---- `lab` commands without a CLI process -----------------------------------------------
# The lab's control commands are test tooling: Workbench.cli runs them (check=True) as the CLI
# would, parsed by the CLI's own definitions, but as one HTTP call from this process instead of
# a Python process that imports moto and temporalio first (a second or more each, hundreds of
# times a run). The `lab` CLI itself is tested through real processes (tests/ec2backup/lab,
# `Lab.cli`). EC2BACKUP_TESTS_LAB_CLI=1 runs them as processes here too.
LAB_DIRECT_COMMANDS = (
    "seed", "churn", "encrypt-attack", "checksum", "fault", "kill-instance", "metrics",
)  # fmt: skip

_LAB_GROUP: Any = None


def _lab_group() -> Any:
    """The `lab` command group as click sees it (its options, types and defaults)."""
    import typer

    from ec2backup_lab.cli import lab_app

    global _LAB_GROUP
    if _LAB_GROUP is None:
        _LAB_GROUP = typer.main.get_command(lab_app)
    return _LAB_GROUP


def _lab_request(args: tuple[str, ...]) -> tuple[str, str, Any, bool] | None:
    """(method, path, body, prints JSON) of a `lab` command, as ec2backup_lab.cli builds it;
    None when it must run as a process (another --dir, an unknown command)."""
    import click

    from ec2backup_lab.cli import _parse_tags

    name, argv = args[1], list(args[2:])
    if name not in LAB_DIRECT_COMMANDS:
        return None
    command = _lab_group().commands[name]
    try:
        p = command.make_context(f"ec2backup lab {name}", argv).params
    except click.ClickException as exc:
        raise AssertionError(f"ec2backup {' '.join(args)}: {exc.format_message()}") from None
    if p.get("lab_dir") is not None:
        return None
    if name == "seed":
        body = {
            "instances": p["instances"],
            "volumes": p["volumes"],
            "size_gib": p["size_gib"],
            "region": p["region"],
            "account": p["account"],
            "tags": _parse_tags(list(p["tag"] or [])),
            "encryption": p["encryption"],
            "fill": p["fill"],
            "seed": p["seed_value"],
            "arch": p["arch"],
            "boot_mode": p["boot_mode"],
            "instance_type": p["instance_type"],
        }
        return "POST", "seed", body, True
    if name == "churn":
        body = {
            "volume_id": p["volume_id"],
            "fraction": p["fraction"],
            "seed": p["seed_value"],
            "zeros": p["zeros"],
        }
        return "POST", "churn", body, True
    if name == "encrypt-attack":
        body = {"volume_id": p["volume_id"], "fraction": p["fraction"], "seed": p["seed_value"]}
        return "POST", "encrypt-attack", body, True
    if name == "checksum":
        return "GET", f"checksum/{p['resource_id']}", None, False
    if name == "kill-instance":
        return "POST", "kill-instance", {"instance_id": p["instance_id"]}, True
    if name == "metrics":
        return "GET", "metrics", None, True
    # fault
    if p["clear"]:
        body = {"clear": True}
    elif p["throttle"] is not None:
        body = {"throttle": p["throttle"], "api": p["api"]}
    elif p["api"] and p["error"]:
        body = {"api": p["api"], "error": p["error"], "times": p["times"]}
    else:
        raise AssertionError(f"ec2backup {' '.join(args)}: give --api and --error, or --throttle")
    return "POST", "fault", body, True


def _lab_direct(
    wb: Workbench, args: tuple[str, ...], timeout: float
) -> subprocess.CompletedProcess[str] | None:
    """`ec2backup lab ARGS` (check=True) as the CLI's one control call, or None to run it as a
    process. The output is the CLI's: its JSON (indent 2), or the checksum alone."""
    if os.environ.get("EC2BACKUP_TESTS_LAB_CLI") == "1" or len(args) < 2:
        return None
    request = _lab_request(args)
    if request is None:
        return None
    method, path, body, prints_json = request
    url = wb.env.get("EC2BACKUP_LAB_URL") or wb.lab.aws_url
    req = urllib.request.Request(
        f"{url.rstrip('/')}/_lab/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise AssertionError(f"ec2backup {' '.join(args)} failed: {message}") from None
    except OSError as exc:  # URLError, a timeout: the CLI's "cannot reach the lab"
        raise AssertionError(f"ec2backup {' '.join(args)}: cannot reach the lab: {exc}") from None
    stdout = (json.dumps(data, indent=2) if prints_json else str(data["sha256"])) + "\n"
    return subprocess.CompletedProcess(
        [sys.executable, "-m", "ec2backup.cli", *args], 0, stdout=stdout, stderr=""
    )


def env_for(lab: Any, overrides: dict[str, str | None]) -> dict[str, str]:
    env = {**lab.env, **SESSION_ENV, "PYTHONUNBUFFERED": "1"}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("PATH", os.environ.get("PATH", ""))
    return env
