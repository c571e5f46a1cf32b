"""The Janitor never touches what a restore handed over (issue 14): everything a restore
creates carries `ec2backup:restore=<id>` (provenance) and, until it is delivered,
`ec2backup:restore-pending=<id>`; the Janitor and a failed restore's cleanup act on the pending
tag only. A restored volume and instance survive a Janitor run after Temporal forgot their
Restore; what a restore left half-made is still swept."""

from __future__ import annotations

import uuid
from typing import Any

from session_helpers import REGION, Workbench
from test_restore import RESTORE_TAG, TEMP_TAG, restore, tags_of

from ec2backup.models.janitor import JanitorInput, JanitorOutput
from ec2backup.temporal import TASK_QUEUE

PENDING_TAG = "ec2backup:restore-pending"
INSTALLATION_TAG = "ec2backup:installation"
OTHER_INSTALLATION = "0123456789abcdef"  # another installation sharing the account


def _ours(wb: Workbench) -> str:
    """This installation's id, from its key (what the product tags its resources with)."""
    import base64
    import json

    from ec2backup.installation import INSTALLATION_SECRET, id_from_key

    value = wb.client("secretsmanager").get_secret_value(SecretId=INSTALLATION_SECRET)
    return id_from_key(base64.b64decode(json.loads(value["SecretString"])["key"]))


async def _forget(client: Any, workflow_id: str) -> None:
    """`temporal workflow delete`: Temporal no longer knows the workflow."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest

    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
        )
    )


def _worker_volume(wb: Workbench, ec2: Any, zone: str, session_id: str) -> str:
    """A worker volume of this installation that a (closed) session left behind."""
    tags = [
        {"Key": "ec2backup:session", "Value": session_id},
        {"Key": "ec2backup:role", "Value": "worker"},
        {"Key": INSTALLATION_TAG, "Value": _ours(wb)},
    ]
    spec = [{"ResourceType": "volume", "Tags": tags}]
    return str(ec2.create_volume(Size=1, AvailabilityZone=zone, TagSpecifications=spec)["VolumeId"])


def _janitor(wb: Workbench) -> JanitorOutput:
    async def go(client: Any) -> JanitorOutput:
        out: JanitorOutput = await client.execute_workflow(
            "Janitor",
            JanitorInput(regions=[REGION]),
            id=f"janitor-test-{uuid.uuid4().hex[:8]}",
            task_queue=TASK_QUEUE,
            result_type=JanitorOutput,
        )
        return out

    out: JanitorOutput = wb.temporal(go)
    return out


def test_restored_resources_survive_a_janitor_run_after_temporal_forgets(
    wb: Workbench,
) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--seed", "41")
    session = wb.backup(inst["instance_id"])
    assert session.result is not None
    set_id = session.result["snapshot_set_id"]
    volume = restore(wb, "volume", set_id, "--device", "/dev/sdf", "--wait")
    instance = restore(wb, "instance", set_id, "--wait")
    assert volume.result is not None and instance.result is not None
    volume_id = volume.device_volumes()["/dev/sdf"]
    instance_id = instance.result["instance_id"]
    instance_volumes = sorted(instance.device_volumes().values())
    ec2 = wb.client("ec2")
    # Delivered: provenance kept, nothing marks them temporary.
    for vol in ec2.describe_volumes(VolumeIds=[volume_id, *instance_volumes])["Volumes"]:
        assert PENDING_TAG not in tags_of(vol) and RESTORE_TAG in tags_of(vol)
    ours = _ours(wb)
    # Delivered: neither pending nor the installation's to sweep.
    for vol in ec2.describe_volumes(VolumeIds=[volume_id, *instance_volumes])["Volumes"]:
        assert INSTALLATION_TAG not in tags_of(vol)
    # A restore that died half-way (its workflow is unknown): a volume still pending; and the
    # same of another installation in this account (and of none), which are not ours to sweep.
    leftover_id = f"restore-volume-{uuid.uuid4().hex[:8]}"
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    leftovers = {}
    for owner in (ours, OTHER_INSTALLATION, None):
        leftovers[owner] = ec2.create_volume(
            Size=1,
            AvailabilityZone=zone,
            TagSpecifications=[
                {
                    "ResourceType": "volume",
                    "Tags": [
                        {"Key": RESTORE_TAG, "Value": leftover_id},
                        {"Key": PENDING_TAG, "Value": leftover_id},
                    ]
                    + ([{"Key": INSTALLATION_TAG, "Value": owner}] if owner else []),
                }
            ],
        )["VolumeId"]
    leftover = leftovers[ours]

    # ... and an image it registered over a temporary snapshot, then died before launching:
    # the image keeps the snapshot in use, so it must go first.
    temp = ec2.create_snapshot(
        VolumeId=leftover,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": RESTORE_TAG, "Value": leftover_id},
                    {"Key": TEMP_TAG, "Value": leftover_id},
                    {"Key": INSTALLATION_TAG, "Value": ours},
                ],
            }
        ],
    )["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=[temp], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    image = ec2.register_image(
        Name=f"ec2backup-restore-{leftover_id}",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": temp}}],
        Architecture="x86_64",
        VirtualizationType="hvm",
        TagSpecifications=[
            {
                "ResourceType": "image",
                "Tags": [
                    {"Key": RESTORE_TAG, "Value": leftover_id},
                    {"Key": PENDING_TAG, "Value": leftover_id},
                    {"Key": INSTALLATION_TAG, "Value": ours},
                ],
            }
        ],
    )["ImageId"]

    for restore_id in (volume.restore_id, instance.restore_id):
        wb.temporal(lambda client, rid=restore_id: _forget(client, rid))
    swept = _janitor(wb)

    assert ec2.describe_images(ImageIds=[image])["Images"] == []
    assert not ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": [temp]}]
    )["Snapshots"]
    assert leftover in swept.volumes_deleted
    foreign = [leftovers[OTHER_INSTALLATION], leftovers[None]]
    assert not set(foreign) & set(swept.volumes_deleted)
    assert {v["State"] for v in ec2.describe_volumes(VolumeIds=foreign)["Volumes"]} == {"available"}
    ec2.delete_volume(VolumeId=foreign[0])
    ec2.delete_volume(VolumeId=foreign[1])
    assert not {volume_id, instance_id, *instance_volumes} & {
        *swept.volumes_deleted,
        *swept.instances_terminated,
    }
    states = {
        v["VolumeId"]: v["State"]
        for v in ec2.describe_volumes(VolumeIds=[volume_id, *instance_volumes])["Volumes"]
    }
    assert states[volume_id] == "available"
    assert all(states[v] == "in-use" for v in instance_volumes), states
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    assert reservations[0]["Instances"][0]["State"]["Name"] == "running"


def test_the_janitor_keeps_going_past_what_it_cannot_remove(wb: Workbench) -> None:
    """Two closed sessions left a worker volume each; deleting the first is refused once: the
    sweep reports it in `failures`, removes the other, and the next run removes the first."""
    ec2 = wb.client("ec2")
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    left = {}
    for n in range(2):
        # sorts before every real session id: the one refused delete is ours
        session_id = f"aaa-janitor-{n}-{uuid.uuid4().hex[:8]}"
        left[session_id] = _worker_volume(wb, ec2, zone, session_id)
    wb.cli("lab", "fault", "--api", "DeleteVolume", "--error", "UnauthorizedOperation")
    try:
        first = _janitor(wb)
    finally:
        wb.cli("lab", "fault", "--clear")
    refused = [s for s in left if any(s in f for f in first.failures)]
    assert len(refused) == 1, first.failures
    assert "UnauthorizedOperation" in first.failures[0]
    (other,) = set(left) - set(refused)
    assert left[other] in first.volumes_deleted
    assert first.places_swept >= 1
    second = _janitor(wb)
    assert left[refused[0]] in second.volumes_deleted
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": list(left.values())}])[
        "Volumes"
    ]


def test_the_janitor_schedule_widens_to_every_orchestrators_regions(wb: Workbench) -> None:
    """An orchestrator started with other Regions adds them to the existing Janitor schedule
    (it used to keep the first orchestrator's forever), without undoing a pause."""
    from ec2backup.orchestrator import JANITOR_SCHEDULE_ID, ensure_janitor_schedule

    async def go(client: Any) -> tuple[list[str], list[str], bool]:
        handle = client.get_schedule_handle(JANITOR_SCHEDULE_ID)
        before = await ensure_janitor_schedule(client, [REGION])
        await handle.pause(note="test: paused by an operator")
        try:
            widened = await ensure_janitor_schedule(client, ["eu-west-1"])
            again = await ensure_janitor_schedule(client, [REGION])
            assert again == widened
            paused = (await handle.describe()).schedule.state.paused
        finally:
            await handle.unpause()
        return before, widened, paused

    before, widened, paused = wb.temporal(go)
    assert REGION in before
    assert widened == sorted({*before, "eu-west-1"})
    assert paused


def test_the_janitor_sweeps_every_place_the_installation_remembers(wb: Workbench) -> None:
    """Not only the Regions of its input: a place the installation uses (here eu-west-1, as a
    replication target or a restore there records it) is swept too."""
    import subprocess
    import sys

    from session_helpers import REPO_ROOT

    subprocess.run(
        [sys.executable, "-c", "from ec2backup import installation as i; "
         "i.remember_place('eu-west-1', None)"],
        env=wb.env, cwd=REPO_ROOT, check=True,
    )  # fmt: skip
    ec2 = wb.client("ec2", "eu-west-1")
    session_id = f"janitor-places-{uuid.uuid4().hex[:8]}"  # a closed session Temporal forgot
    volume = _worker_volume(wb, ec2, "eu-west-1a", session_id)
    swept = _janitor(wb)  # its input names us-east-1 only
    assert volume in swept.volumes_deleted, swept
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"]
