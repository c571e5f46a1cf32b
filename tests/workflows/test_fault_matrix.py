"""The fault matrix (issue 14): backups, restores, retention (`repo forget`) and prunes of one
repository run concurrently, round after round, while a driver kills (-9) the orchestrator, a
worker agent and a prune at random moments and injects S3 5xx, 403 and throttling. Afterwards
`repo check --read-data` is clean, every committed restore point that was not forgotten is
still there and restores byte-exact, and nothing is left running.

`make test` runs the short form (2 rounds); `make faults` the long one (6 rounds). Each prints
its numbers. A session or restore that a 403 (a permanent error) hits may fail: it must fail
cleanly (no restore point, nothing left); what committed must never be lost.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from session_helpers import REPO_ROOT, Workbench, wait_for

# The repository's lock TTL: a prune killed with its exclusive lock blocks backups this long
# (production default 300 s; a repository parameter, so every locker agrees).
LOCK_TTL_SECONDS = "20"
DATA_DEVICE = "/dev/sdf"
# Live restore points kept: older ones are forgotten (retention), so prunes have work.
KEEP = 3
S3_5XX = [
    ("PutObject", "SlowDown"),
    ("GetObject", "InternalError"),
    ("ListObjects", "ServiceUnavailable"),
    ("HeadObject", "InternalError"),
]
S3_403 = [("GetObject", "AccessDenied"), ("PutObject", "AccessDenied")]
# Every round: each kind of kill and a 5xx burst, plus one more S3 fault, in random order.
EVERY_ROUND = ["kill-orchestrator", "kill-agent", "kill-prune", "s3-5xx"]
ONE_MORE = ["s3-403", "throttle", "s3-5xx"]


def _snapshot_of(wb: Workbench, result: dict[str, Any], volume_id: str) -> str:
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=result["snapshot_ids"])["Snapshots"]
    return next(s["SnapshotId"] for s in snaps if s["VolumeId"] == volume_id)


class Driver:
    """Random faults for one round, from a thread, until stopped."""

    def __init__(self, wb: Workbench, rng: random.Random, repo: str, log: Path) -> None:
        self.wb, self.rng, self.repo, self.log = wb, rng, repo, log
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        events = [*EVERY_ROUND, self.rng.choice(ONE_MORE)]
        self.rng.shuffle(events)
        try:
            for event in events:
                if self.stop.wait(self.rng.uniform(0.3, 2.5)):
                    return
                self.fire(event)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def fire(self, event: str) -> None:
        wb = self.wb
        if event == "kill-orchestrator":
            wb.orchestrator.stop(kill=True)
            time.sleep(self.rng.uniform(0.5, 3.0))
            wb.orchestrator.start()
        elif event == "kill-agent":  # the session's worker or the restore's, once one runs
            deadline = time.monotonic() + 30
            while not (agents := list(wb.metrics()["agents"])):
                if time.monotonic() > deadline or self.stop.wait(0.5):
                    return
            wb.cli("lab", "kill-instance", self.rng.choice(agents))
        elif event == "kill-prune":  # a prune of its own, killed at a random point of its run
            with open(self.log, "ab") as log:
                prune = _start_prune(wb, self.repo, log)
            time.sleep(self.rng.uniform(0.2, 2.5))
            if prune.poll() is not None:
                event = "kill-prune (it had finished)"
            prune.kill()
            prune.wait()
        elif event in ("s3-5xx", "s3-403"):
            api, code = self.rng.choice(S3_5XX if event == "s3-5xx" else S3_403)
            times = "1" if event == "s3-403" else str(self.rng.randint(1, 3))
            wb.cli("lab", "fault", "--api", api, "--error", code, "--times", times)
            event = f"{event} {api} {code} x{times}"
        elif event == "throttle":
            wb.cli("lab", "fault", "--throttle", "25", "--api", "PutObject")
        self.counts[event] += 1
        print(f"  fault: {event}")


def _start_prune(wb: Workbench, repo: str, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ec2backup.cli", "repo", "prune", "--repo", repo,
         "--grace-hours", "0", "--lock-wait", "180"],
        env=wb.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _restore_result(wb: Workbench, restore_id: str, timeout: float) -> dict[str, Any] | None:
    async def go(client: Any) -> Any:
        handle = client.get_workflow_handle(restore_id, result_type=dict)
        return await asyncio.wait_for(handle.result(), timeout)

    try:
        return dict(wb.temporal(go))
    except Exception as exc:
        print(f"  restore {restore_id}: {type(exc).__name__}: {exc}")
        return None


def _session_outcome(wb: Workbench, sid: str) -> tuple[dict[str, Any] | None, str]:
    """(the result of a completed session, else None; why it did not complete)."""
    status = wb.wait_status(sid, 400)
    try:
        result = wb.session_result(sid, 60)
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return None, f"{status}: {cause}"[:400]
    if status == "COMPLETED" and result.get("status") == "completed":
        return result, ""
    return None, f"{status} {result.get('status')}: {result.get('error')}"[:400]


@pytest.mark.parametrize(
    "rounds",
    [
        pytest.param(2, id="short", marks=pytest.mark.timeout(900)),
        pytest.param(6, id="long", marks=[pytest.mark.fault, pytest.mark.timeout(2400)]),
    ],
)
def test_fault_matrix(
    wb: Workbench, tmp_path: Path, rounds: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(1414 * rounds)
    repo = wb.new_repo("--lock-ttl-seconds", LOCK_TTL_SECONDS)
    inst = wb.seed("--volumes", "1", "--size-gib", "2", "--fill", "0.2", "--seed", str(rounds))
    volume = inst["volumes"][0]["volume_id"]
    committed: dict[str, str] = {}  # restore point -> the snapshot of the data volume
    forgotten: list[str] = []
    sessions: list[str] = []
    restores: list[str] = []
    n = Counter[str]()
    faults = Counter[str]()
    t0 = time.monotonic()

    for r in range(rounds):
        print(f"round {r + 1}/{rounds}")
        wb.cli("lab", "churn", volume, "--fraction", "0.05", "--seed", str(100 * rounds + r))
        live = [rp for rp in committed if rp not in forgotten]
        sid = wb.start_backup(inst["instance_id"], "--repo", repo)
        sessions.append(sid)
        restore_id, restored_from = None, None
        if live:
            restored_from = rng.choice(live)
            proc = wb.cli(
                "restore", "volume", restored_from, "--repo", repo, "--source", "backup",
                "--device", DATA_DEVICE,
            )  # fmt: skip
            restore_id = proc.stdout.splitlines()[0].strip()
            restores.append(restore_id)
        # retention, concurrently: the oldest restore point beyond KEEP (not the one being
        # restored) is forgotten while the backup, the restore and the prune run
        expire = [rp for rp in live if rp != restored_from][: max(len(live) - KEEP, 0)]
        prune_log = tmp_path / f"prune-{r}.log"
        with open(prune_log, "wb") as log:
            prune = _start_prune(wb, repo, log)
            forget = subprocess.Popen(
                [sys.executable, "-m", "ec2backup.cli", "repo", "forget", *expire,
                 "--repo", repo, "--lock-wait", "120"],
                env=wb.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            ) if expire else None  # fmt: skip
        driver = Driver(wb, rng, repo, tmp_path / f"killed-prunes-{r}.log")
        thread = threading.Thread(target=driver.run, name="fault-driver")
        thread.start()
        try:
            result, why = _session_outcome(wb, sid)
            restored = _restore_result(wb, restore_id, 600) if restore_id else None
        finally:
            driver.stop.set()
            thread.join()
            wb.cli("lab", "fault", "--clear")
            if wb.orchestrator.proc is None or wb.orchestrator.proc.poll() is not None:
                wb.orchestrator.start()  # killed by the last event
        if driver.error is not None:
            raise driver.error
        faults.update(driver.counts)
        try:
            code = prune.wait(timeout=300)
        except subprocess.TimeoutExpired:
            prune.kill()
            raise AssertionError(f"prune hung:\n{prune_log.read_text()}") from None
        outcome = {0: "completed", -9: "killed"}.get(code, "failed")
        n[f"prunes {outcome}"] += 1
        if forget is not None:
            if forget.wait(timeout=300) == 0:
                forgotten.extend(expire)
                n["restore points forgotten"] += len(expire)
            else:  # a fault hit it: what it did not remove stays, and must stay restorable
                n["forgets failed"] += 1
                listed = {p["id"] for p in wb.cli_json("repo", "ls", "--repo", repo, "--json")}
                forgotten.extend(rp for rp in expire if rp not in listed)
        if code not in (0, -9):
            print(f"  prune rc={code}: {prune_log.read_text().strip().splitlines()[-1:]}")

        if result is not None:
            n["sessions completed"] += 1
            committed[result["restore_point_id"]] = _snapshot_of(wb, result, volume)
        else:
            n["sessions failed"] += 1
            print(f"  session {sid} did not complete: {why}")
        if restore_id is not None:
            if restored is not None and restored.get("status") == "completed":
                new_volume = restored["volumes"][0]["volume_id"]
                assert restored_from is not None
                assert wb.checksum(new_volume) == wb.checksum(committed[restored_from]), (
                    f"restore {restore_id} of {restored_from} is not byte-exact"
                )
                n["restores exact"] += 1
                wb.client("ec2").delete_volume(VolumeId=new_volume)
            else:
                n["restores failed"] += 1

    # Afterwards: nothing running, nothing lost, everything exact.
    wb.cli("lab", "fault", "--clear")
    for sid in sessions:
        assert wb.leftovers(sid) == {}, (sid, wb.leftovers(sid), wb.diagnose(sid))
    wait_for(lambda: not wb.metrics()["agents"], 120, "every agent to stop")
    for _ in range(2):  # the second deletes what the first marked
        wb.cli("repo", "prune", "--repo", repo, "--grace-hours", "0", "--lock-wait", "120")
    wb.cli("repo", "check", "--repo", repo, "--read-data")
    listed = {rp["id"] for rp in wb.cli_json("repo", "ls", "--repo", repo, "--json")}
    kept = [rp for rp in committed if rp not in forgotten]
    assert set(kept) <= listed, f"committed restore points lost: {set(kept) - listed}"
    assert not set(forgotten) & listed
    for rp in kept:
        wb.assert_restores(repo, rp, volume, committed[rp], tmp_path / "verify.img")
    n["restore points verified"] = len(kept)

    kills = sum(v for k, v in faults.items() if k.startswith("kill") and "finished" not in k)
    injected = sum(v for k, v in faults.items() if not k.startswith("kill"))
    summary = [
        f"fault matrix: {rounds} rounds in {time.monotonic() - t0:.0f}s; kills {kills}, "
        f"S3 faults {injected}; " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())),
        *(f"  {kind}: {count}" for kind, count in sorted(faults.items())),
    ]
    with capsys.disabled():  # the numbers show in `make test` / `make faults` output too
        print("\n" + "\n".join(summary))
    assert n["sessions completed"] >= rounds // 2, n
    assert kills + injected > 0, "the driver injected nothing: the run tested no fault"
