"""Worker instances for image-level backups: plan, provision, release, and the janitor's sweep.

Every resource a session creates carries `ec2backup:session=<workflow id>` and
`ec2backup:role=worker`, so cleanup (release, janitor) finds it by tag and never depends on
return values that a cancellation may have lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ec2backup import aws, config, installation, payloads, tagcodec
from ec2backup.errors import UserError, short_error
from ec2backup.models.session import (
    ImageBackupSpec,
    ImagePlan,
    ReleaseWorkerOutput,
    VolumePlan,
    WorkerHandle,
    WorkerVolume,
)
from ec2backup.models.snapshots import SnapshotSet
from ec2backup.repository.blockmap import PAGE_BLOCKS
from ec2backup.userdata import HOST_TASK_QUEUE_TEMPLATE, render_agent_user_data

log = logging.getLogger("ec2backup.workers")

GIB = 1024**3
EBS_BLOCK_SIZE = 512 * 1024
ROLE_KEY = "ec2backup:role"
SOURCE_VOLUME_KEY = "ec2backup:source-volume"
WORKER_ROLE = "worker"
# Default transfer range: 8 GiB per activity keeps history small (a 16 TiB volume = 2,048
# ranges) while a lost host re-reads at most one range. Override: EC2BACKUP_RANGE_BLOCKS.
DEFAULT_RANGE_BLOCKS = 8 * GIB // EBS_BLOCK_SIZE
# Worker sizing after Veeam's defaults (vCPUs for compression/encryption by data size).
WORKER_TYPES = [(1024, "c5.large"), (16 * 1024, "c5.2xlarge"), (None, "c5.4xlarge")]
# gp3 baseline and ceilings; volume copies read faster with more throughput.
GP3_BASE_IOPS, GP3_MAX_IOPS = 3000, 16000
GP3_BASE_THROUGHPUT, GP3_MAX_THROUGHPUT = 125, 1000
# Above this size one volume copy cannot be read fast enough within a backup window: give the
# worker a second copy and split ranges between them.
SECOND_COPY_GIB = 2048
WORKER_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnopqrstuvwxyz"]
SESSION_SECRET_PREFIX = "ec2backup/session/"
# A dead worker is noticed after this long without a heartbeat from its transfer range.
DEFAULT_HEARTBEAT_TIMEOUT = 60.0
# A worker boots in about a minute on EC2; past this it is presumed lost and replaced.
DEFAULT_BOOT_TIMEOUT = 600.0
WAIT_POLL_SECONDS = 0.5


class WorkerError(UserError):
    pass


# ---- planning (pure) ---------------------------------------------------------------------------
def plan_instance_type(total_gib: int, requested: str | None = None) -> str:
    if requested:
        return requested
    for limit, instance_type in WORKER_TYPES:
        if limit is None or total_gib < limit:
            return instance_type
    raise AssertionError("unreachable")


def plan_volume(size_gib: int) -> tuple[str, int, int, int]:
    """(volume type, iops, throughput MiB/s, copies) for a worker's copy of a volume."""
    copies = 2 if size_gib > SECOND_COPY_GIB else 1
    throughput = min(GP3_MAX_THROUGHPUT, max(GP3_BASE_THROUGHPUT, size_gib // 4))
    # gp3 allows at most 0.25 MiB/s per provisioned IOPS: raise IOPS with throughput.
    iops = min(GP3_MAX_IOPS, max(GP3_BASE_IOPS, throughput * 4))
    return "gp3", iops, throughput, copies


def choose_placement(
    spec_placement: str, snapshot_set: SnapshotSet, backup_account: str
) -> tuple[str, str]:
    """(placement, reason): where the worker runs and why."""
    same_account = snapshot_set.account == backup_account
    default_key = [m.volume_id for m in snapshot_set.members if m.default_key]
    if spec_placement == "production":
        return "production", "requested"
    if same_account:
        return "backup", f"instance is in the backup account {backup_account}"
    if default_key:
        if spec_placement == "backup":
            raise WorkerError(
                f"volumes {', '.join(default_key)} use the AWS managed key aws/ebs, whose "
                "snapshots cannot be shared with the backup account: use placement "
                "'production' or 'auto'"
            )
        return "production", (
            f"volumes {', '.join(default_key)} are encrypted with the default aws/ebs key, "
            "which cannot be shared across accounts"
        )
    return "backup", "default placement (snapshots shared with the backup account)"


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat before a worker is presumed lost (backups and restores)."""
    return float(os.environ.get("EC2BACKUP_HEARTBEAT_TIMEOUT_SECONDS") or DEFAULT_HEARTBEAT_TIMEOUT)


def boot_timeout() -> float:
    """Seconds a new worker may take to start polling its task queue."""
    return float(os.environ.get("EC2BACKUP_AGENT_BOOT_TIMEOUT_SECONDS") or DEFAULT_BOOT_TIMEOUT)


def range_blocks() -> int:
    return int(os.environ.get("EC2BACKUP_RANGE_BLOCKS") or DEFAULT_RANGE_BLOCKS)


def volume_plans(snapshot_set: SnapshotSet, copies_asked: int | None = None) -> list[VolumePlan]:
    """Per volume: the worker's copies (`copies_asked`, else by size) and as many streams,
    one writer per copy, where the volume has a block-map page for each (VolumePlan.spans)."""
    plans = []
    if copies_asked is not None and copies_asked * len(snapshot_set.members) > len(WORKER_DEVICES):
        raise WorkerError(
            f"{copies_asked} copies of {len(snapshot_set.members)} volumes need more than the "
            f"worker's {len(WORKER_DEVICES)} device names: ask for fewer copies"
        )
    devices = iter(WORKER_DEVICES)
    for m in snapshot_set.members:
        vtype, iops, throughput, copies = plan_volume(m.size_gib)
        copies = copies_asked or copies
        worker_devices = [next(devices) for _ in range(copies)]
        blocks = m.size_gib * GIB // EBS_BLOCK_SIZE
        plans.append(
            VolumePlan(
                source_volume_id=m.volume_id,
                snapshot_id=m.snapshot_id,
                device=m.device,
                worker_device=worker_devices[0],
                size_gib=m.size_gib,
                volume_type=vtype,
                iops=iops,
                throughput=throughput,
                blocks_total=blocks,
                copies=copies,
                worker_devices=worker_devices,
                streams=max(1, min(copies, -(-blocks // PAGE_BLOCKS))),
            )
        )
    return plans


def session_secret_name(session_id: str) -> str:
    return SESSION_SECRET_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()[:32]


def session_secret_id(
    session_id: str, region: str, worker_account: str, backup_account: str
) -> str:
    """How the worker names its session secret: the name when it runs in the backup account,
    else the secret's (partial) ARN in the backup account, where the secret always lives."""
    name = session_secret_name(session_id)
    if worker_account == backup_account:
        return name
    return f"arn:aws:secretsmanager:{region}:{backup_account}:secret:{name}"


def secret_name_of(secret_id: str) -> str:
    return secret_id.split(":secret:", 1)[-1]


def build_plan(
    session_id: str, snapshot_set: SnapshotSet, spec: ImageBackupSpec, backup_account: str
) -> ImagePlan:
    placement, reason = choose_placement(spec.worker.placement, snapshot_set, backup_account)
    total = sum(m.size_gib for m in snapshot_set.members)
    return ImagePlan(
        repository=spec.repository,
        placement=placement,  # type: ignore[arg-type]
        placement_reason=reason,
        worker_role_arn=snapshot_set.account_role_arn if placement == "production" else None,
        snapshot_role_arn=snapshot_set.account_role_arn,
        region=snapshot_set.region,
        availability_zone=snapshot_set.availability_zone,
        subnet_id=spec.worker.subnet_id,
        security_group_ids=list(spec.worker.security_group_ids),
        instance_type=plan_instance_type(
            total,
            spec.worker.instance_type
            or config.load().worker_for(snapshot_set.region).instance_types.get("backup"),
        ),
        range_blocks=range_blocks(),
        volumes=volume_plans(snapshot_set, spec.worker.copies),
        keep_days=spec.keep_days,
        secret_name=session_secret_id(
            session_id,
            snapshot_set.region,
            snapshot_set.account if placement == "production" else backup_account,
            backup_account,
        ),
        heartbeat_timeout_seconds=heartbeat_timeout(),
        boot_timeout_seconds=boot_timeout(),
    )


# ---- secrets for the agent ---------------------------------------------------------------------
def put_session_secret(session_id: str, plan: ImagePlan, password: str | None) -> None:
    put_secret(
        session_id, plan.region, plan.worker_role_arn, plan.secret_name, plan.repository, password
    )


def put_secret(
    session_id: str,
    region: str,
    role_arn: str | None,
    secret_name: str,
    repository: str,
    password: str | None,
) -> None:
    """Hand the repository password to the worker through Secrets Manager (read by the agent
    with its instance role), never through user-data or payloads. None: a KMS repository,
    which the worker opens with its instance role's kms:Decrypt.

    The secret always stays in the backup account: whoever controls a production account must
    not get the shared repository's key. A worker in another account (`role_arn`: production
    placement, a restore into another account) reads it across accounts, which AWS allows only
    for a secret encrypted with a customer-managed key: the installation's session-secret key
    (`session_secret_key`); the secret's resource policy then admits that one worker instance
    (`authorize_worker`, once it exists), nothing else of its account."""
    sm = aws.client("secretsmanager", region)
    name = secret_name_of(secret_name)
    # The agent decodes its Temporal payloads with the keyring this secret carries: it never
    # reads the installation secret (ec2backup.payloads).
    value = json.dumps(
        {
            "repository": repository,
            "password": password,
            "payload_keys": payloads.keyring().export(),
        }
    )
    params: dict[str, Any] = {}
    if role_arn is not None:
        params["KmsKeyId"] = session_secret_key(region, aws.account_of_role(role_arn))
    try:
        sm.create_secret(Name=name, SecretString=value, Tags=_session_tags(session_id), **params)
        log.info("session secret %s created in %s", name, region)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=value)
        log.info("session secret %s updated in %s", name, region)


# The backup account's key for session secrets read from other accounts (one per Region).
SESSION_SECRET_KEY_ALIAS = "alias/ec2backup-session-secrets"


def session_secret_key(region: str, worker_account: str) -> str:
    """The session-secret key of this Region (created on first use), its policy letting
    `worker_account` decrypt through Secrets Manager only; returns its ARN."""
    kms = aws.client("kms", region)
    try:
        key_id = kms.describe_key(KeyId=SESSION_SECRET_KEY_ALIAS)["KeyMetadata"]["Arn"]
    except kms.exceptions.NotFoundException:
        key_id = kms.create_key(
            Description="ec2backup: session secrets read by workers of other accounts",
            Tags=[
                {
                    "TagKey": installation.INSTALLATION_TAG,
                    "TagValue": installation.installation_id(),
                }
            ],
        )["KeyMetadata"]["Arn"]
        try:
            kms.create_alias(AliasName=SESSION_SECRET_KEY_ALIAS, TargetKeyId=key_id)
        except kms.exceptions.AlreadyExistsException:  # a concurrent session made one first
            kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
            key_id = kms.describe_key(KeyId=SESSION_SECRET_KEY_ALIAS)["KeyMetadata"]["Arn"]
    policy = json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    statements = policy.setdefault("Statement", [])
    sid = f"WorkersOf{worker_account}"
    if not any(st.get("Sid") == sid for st in statements):
        statements.append(
            {
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{worker_account}:root"},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
                },
            }
        )
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
    return str(key_id)


def authorize_worker(region: str, role_arn: str, secret_name: str, instance_id: str) -> None:
    """Let exactly this worker instance (of the account of `role_arn`) read the session
    secret: `ec2:SourceInstanceARN` is on every request signed with an instance's role keys."""
    account = aws.account_of_role(role_arn)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ThisSessionsWorker",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "ec2:SourceInstanceARN": (
                            f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"
                        )
                    }
                },
            }
        ],
    }
    aws.client("secretsmanager", region).put_resource_policy(
        SecretId=secret_name_of(secret_name),
        ResourcePolicy=json.dumps(policy),
        BlockPublicPolicy=True,
    )


def read_session_secret(secret_name: str, region: str) -> dict[str, str | None]:
    sm = aws.client("secretsmanager", region)
    return dict(json.loads(sm.get_secret_value(SecretId=secret_name)["SecretString"]))


# A worker in another account may start before the orchestrator has let it read its session
# secret (`authorize_worker` runs once the instance exists): the agent waits this long.
SESSION_SECRET_WAIT_SECONDS = 600.0
SESSION_SECRET_POLL_SECONDS = 2.0


def wait_session_keyring(secret_name: str, region: str) -> payloads.Keyring:
    """The payload keyring of this worker's session secret, once the worker may read it."""
    from botocore.exceptions import ClientError

    sm = aws.client("secretsmanager", region)
    deadline = time.monotonic() + SESSION_SECRET_WAIT_SECONDS
    while True:
        try:
            value = sm.get_secret_value(SecretId=secret_name)["SecretString"]
            break
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            waiting = code in ("AccessDeniedException", "ResourceNotFoundException")
            if not waiting or time.monotonic() > deadline:
                raise UserError(
                    f"session secret {secret_name} ({region}): {short_error(exc)}"
                ) from exc
            time.sleep(SESSION_SECRET_POLL_SECONDS)
    doc = json.loads(value).get("payload_keys")
    if not isinstance(doc, dict):
        raise UserError(f"session secret {secret_name}: it carries no payload keys")
    return payloads.Keyring.from_export(doc)


def secret_password(secret: dict[str, str | None]) -> bytes | None:
    """The repository key a session secret hands over (None: open with the KMS key file)."""
    password = secret.get("password")
    return password.encode() if password is not None else None


def share_snapshots(plan: ImagePlan, snapshot_set: SnapshotSet, backup_account: str) -> None:
    if plan.placement != "backup" or snapshot_set.account == backup_account:
        return
    ec2 = aws.client("ec2", snapshot_set.region, snapshot_set.account_role_arn)
    for m in snapshot_set.members:
        ec2.modify_snapshot_attribute(
            SnapshotId=m.snapshot_id,
            Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": backup_account}]},
        )


# ---- provisioning ------------------------------------------------------------------------------
def _session_tags(session_id: str, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    tags = {
        tagcodec.SESSION_KEY: session_id,
        ROLE_KEY: WORKER_ROLE,
        installation.INSTALLATION_TAG: installation.installation_id(),
        "Name": f"ec2backup-worker {session_id}"[:255],
        **(extra or {}),
    }
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _wait(
    check: Callable[[], bool],
    what: str,
    timeout: float = 600.0,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise WorkerError(f"timed out waiting for {what}")
        heartbeat(what)
        time.sleep(WAIT_POLL_SECONDS)


def client_token(session_id: str, attempt: int) -> str:
    """RunInstances idempotency token (<= 64 ASCII chars) for one provisioning attempt."""
    return hashlib.sha256(f"{session_id}#{attempt}".encode()).hexdigest()[:64]


def provision(
    session_id: str,
    plan: ImagePlan,
    attempt: int,
    temporal_address: str,
    namespace: str,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> WorkerHandle:
    ec2 = aws.client("ec2", plan.region, plan.worker_role_arn)
    instance_id = launch(
        ec2,
        session_id,
        attempt,
        instance_type=plan.instance_type,
        availability_zone=plan.availability_zone,
        subnet_id=plan.subnet_id,
        security_group_ids=plan.security_group_ids,
        temporal_address=temporal_address,
        namespace=namespace,
        region=plan.region,
        in_backup_account=plan.worker_role_arn is None,
        ssm=aws.client("ssm", plan.region, plan.worker_role_arn),
        session_secret=plan.secret_name,
    )
    heartbeat(f"instance {instance_id} launched")
    if plan.worker_role_arn is not None:
        authorize_worker(plan.region, plan.worker_role_arn, plan.secret_name, instance_id)
    wanted: list[VolumeWant] = []
    for vp in plan.volumes:
        for device in vp.worker_devices:
            create: dict[str, Any] = {"SnapshotId": vp.snapshot_id, "VolumeType": vp.volume_type}
            if vp.iops:
                create["Iops"] = vp.iops
            if vp.throughput:
                create["Throughput"] = vp.throughput
            wanted.append(VolumeWant(vp.source_volume_id, device, create))
    volume_ids = attach_volumes(
        ec2,
        session_id,
        instance_id,
        existing_volumes(ec2, session_id),
        wanted,
        availability_zone=plan.availability_zone,
        heartbeat=heartbeat,
    )
    volumes = [
        WorkerVolume(source_volume_id=w.source_volume_id, volume_id=v, device=w.device)
        for w, v in zip(wanted, volume_ids, strict=True)
    ]
    return WorkerHandle(
        instance_id=instance_id,
        task_queue=HOST_TASK_QUEUE_TEMPLATE.format(instance_id=instance_id),
        region=plan.region,
        role_arn=plan.worker_role_arn,
        volumes=volumes,
    )


def launch(
    ec2: Any,
    session_id: str,
    attempt: int,
    *,
    instance_type: str,
    availability_zone: str,
    subnet_id: str | None,
    security_group_ids: list[str],
    temporal_address: str,
    namespace: str,
    region: str,
    in_backup_account: bool,
    ssm: Any = None,
    session_secret: str | None = None,
) -> str:
    """Run (idempotently, by ClientToken) one worker instance whose user-data starts the agent
    on its own task queue; returns its instance id. Used by backups, restores and archives.

    From the installation configuration (`worker`, `workers.<region>`): the image (an AMI,
    or the one an SSM parameter names: Amazon Linux 2023's by default, of the instance
    type's architecture), the instance profile (required: the agent's only credentials), the
    maximum lifetime; in the backup account also the subnets and security groups, unless
    the policy names its own. Always IMDSv2 only, and shutdown = terminate (the lifetime
    limit powers off; EC2 then terminates)."""
    settings = config.load().worker_for(region)
    if in_backup_account:
        security_group_ids = security_group_ids or settings.security_group_ids
        if not subnet_id and settings.subnet_ids:
            subnet_id = choose_subnet(ec2, settings.subnet_ids, availability_zone, region)
    params: dict[str, Any] = {
        "ImageId": worker_image(ec2, ssm, settings, instance_type, region),
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": client_token(session_id, attempt),
        "UserData": render_agent_user_data(
            temporal_address,
            namespace,
            max_lifetime_minutes=settings.max_lifetime_minutes,
            wheelhouse_url=settings.wheelhouse_url,
            credentials_secret=config.load().temporal.agent_credentials_secret,
            credentials_region=installation.home_region(),
            session_secret=session_secret,
            session_secret_region=region,
        ),
        "Placement": {"AvailabilityZone": availability_zone},
        "TagSpecifications": [
            {
                "ResourceType": "instance",
                "Tags": _session_tags(session_id, {"ec2backup:attempt": str(attempt)}),
            }
        ],
        "InstanceInitiatedShutdownBehavior": "terminate",
        # IMDSv2 only: a request forged through the agent (SSRF) cannot read the instance
        # role's keys; one hop keeps them off containers on the host.
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "IamInstanceProfile": {"Name": settings.instance_profile},
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    if security_group_ids:
        # Exactly these groups (of the worker's account); without any, EC2 puts the
        # instance in its VPC's default group.
        params["SecurityGroupIds"] = list(security_group_ids)
    launched = str(ec2.run_instances(**params)["Instances"][0]["InstanceId"])
    log.info("worker instance %s launched (%s)", launched, params.get("InstanceType"))
    return launched


def instance_architecture(ec2: Any, instance_type: str) -> str:
    """`arm64` for Graviton types, else `x86_64` (the AMI must match: RunInstances refuses)."""
    try:
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as exc:
        raise WorkerError(f"instance type {instance_type}: {short_error(exc)}") from exc
    archs = found[0]["ProcessorInfo"]["SupportedArchitectures"] if found else ["x86_64"]
    return "x86_64" if "x86_64" in archs else "arm64"


def worker_image(
    ec2: Any, ssm: Any, settings: config.ResolvedWorker, instance_type: str, region: str
) -> str:
    """The worker AMI: the configured one, else the one the SSM parameter names (`{arch}` in
    its name is the instance type's architecture; default: Amazon Linux 2023's)."""
    if settings.ami:
        return settings.ami
    name = (settings.ami_ssm_parameter or config.AL2023_PARAMETER).replace(
        "{arch}", instance_architecture(ec2, instance_type)
    )
    if ssm is None:
        raise WorkerError("worker image: no SSM client to read " + name)
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        raise WorkerError(
            f"workers.{region}.ami_ssm_parameter: cannot read {name} in {region}: "
            f"{short_error(exc)}"
        ) from exc


def choose_subnet(ec2: Any, subnet_ids: list[str], availability_zone: str, region: str) -> str:
    """The configured subnet in the zone the worker must run in (its volumes come from
    snapshots restored into that zone)."""
    try:
        subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    except ClientError as exc:
        raise WorkerError(f"workers.{region}.subnet_ids: {short_error(exc)}") from exc
    for subnet in subnets:
        if subnet["AvailabilityZone"] == availability_zone:
            return str(subnet["SubnetId"])
    raise WorkerError(
        f"workers.{region}.subnet_ids: none of {', '.join(subnet_ids)} is in "
        f"{availability_zone}, where this worker must run: add a subnet of that zone"
    )


def existing_volumes(ec2: Any, session_id: str) -> dict[tuple[str | None, str | None], Any]:
    """The session's worker volumes by (source volume, worker device): a retried provisioning
    attaches them again instead of creating more."""
    return {
        (
            tagcodec.tag_value(v.get("Tags"), SOURCE_VOLUME_KEY),
            tagcodec.tag_value(v.get("Tags"), "ec2backup:device"),
        ): v
        for v in _session_volumes(ec2, session_id)
    }


@dataclass(frozen=True)
class VolumeWant:
    """One worker volume: a copy of `source_volume_id` at `device`, made with `create`'s
    CreateVolume parameters (a snapshot, or a size for an empty one)."""

    source_volume_id: str
    device: str
    create: dict[str, Any]


def attach_volumes(
    ec2: Any,
    session_id: str,
    instance_id: str,
    existing: dict[tuple[str | None, str | None], Any],
    wanted: list[VolumeWant],
    *,
    availability_zone: str,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """The worker volumes `wanted`, each created if it does not exist yet (found in
    `existing` by source volume and device) and attached to the instance at its device; their
    ids, in order. Every volume is asked for before any is waited for: volumes are created,
    and attachments complete, side by side (about a volume's time, not one per volume)."""
    volume_ids: list[str] = []
    attached_to: list[str | None] = []
    states: list[str] = []
    for want in wanted:
        heartbeat(f"volume for {want.source_volume_id} at {want.device}")  # a cancel stops here
        found = existing.get((want.source_volume_id, want.device))
        if found is None:
            tags = _session_tags(
                session_id,
                {SOURCE_VOLUME_KEY: want.source_volume_id, "ec2backup:device": want.device},
            )
            volume_id = ec2.create_volume(
                AvailabilityZone=availability_zone,
                TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
                **want.create,
            )["VolumeId"]
            log.info(
                "volume %s created from %s for %s", volume_id, want.source_volume_id, want.device
            )
            volume_ids.append(str(volume_id))
            states.append("creating")
            attached_to.append(None)
        else:
            volume_ids.append(str(found["VolumeId"]))
            states.append(found["State"])
            attached_to.append((found.get("Attachments") or [{}])[0].get("InstanceId"))
    for volume_id in volume_ids:
        _wait(
            functools.partial(_volume_in, ec2, volume_id, ("available", "in-use")),
            f"volume {volume_id}",
            heartbeat=heartbeat,
        )
    to_attach = [i for i, owner in enumerate(attached_to) if owner != instance_id]
    for i in to_attach:
        if states[i] == "in-use" and attached_to[i]:
            ec2.detach_volume(VolumeId=volume_ids[i], Force=True)
    for i in to_attach:
        if states[i] == "in-use" and attached_to[i]:
            _wait(
                functools.partial(_volume_in, ec2, volume_ids[i], ("available",)),
                f"detach of {volume_ids[i]}",
                heartbeat=heartbeat,
            )
    if to_attach:
        # AttachVolume refuses a pending instance ("IncorrectState: Instance '...' is not
        # 'running'."): the volumes are created while it boots, attached once it runs.
        _wait(
            functools.partial(_instance_running, ec2, instance_id),
            f"instance {instance_id} running",
            heartbeat=heartbeat,
        )
    for i in to_attach:
        ec2.attach_volume(VolumeId=volume_ids[i], InstanceId=instance_id, Device=wanted[i].device)
        log.info("volume %s attached to %s at %s", volume_ids[i], instance_id, wanted[i].device)
    # AttachVolume returns while the attachment is `attaching`: the device appears on the
    # instance only once it is `attached`, and the agent opens it right after this returns.
    for volume_id in volume_ids:
        _wait(
            functools.partial(_attached, ec2, volume_id, instance_id),
            f"attachment of {volume_id} to {instance_id}",
            heartbeat=heartbeat,
        )
    return volume_ids


def attach_volume(
    ec2: Any,
    session_id: str,
    instance_id: str,
    existing: dict[tuple[str | None, str | None], Any],
    *,
    source_volume_id: str,
    device: str,
    availability_zone: str,
    create: dict[str, Any],
    heartbeat: Callable[[str], None] = lambda _: None,
) -> str:
    """One volume of `attach_volumes`."""
    (volume_id,) = attach_volumes(
        ec2,
        session_id,
        instance_id,
        existing,
        [VolumeWant(source_volume_id, device, create)],
        availability_zone=availability_zone,
        heartbeat=heartbeat,
    )
    return volume_id


def _attached(ec2: Any, volume_id: str, instance_id: str) -> bool:
    vols = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    attachments = vols[0].get("Attachments", []) if vols else []
    return any(
        a.get("InstanceId") == instance_id and a.get("State") == "attached" for a in attachments
    )


def _instance_running(ec2: Any, instance_id: str) -> bool:
    """True once it runs; a worker that stopped or went away before that is lost."""
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    state = found[0]["Instances"][0]["State"]["Name"] if found else "terminated"
    if state in ("shutting-down", "terminated", "stopping", "stopped"):
        raise WorkerError(f"worker {instance_id} is {state} before its volumes were attached")
    return bool(state == "running")


def _volume_state(ec2: Any, volume_id: str) -> str:
    vols = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return str(vols[0]["State"]) if vols else "deleted"


def _volume_in(ec2: Any, volume_id: str, states: tuple[str, ...]) -> bool:
    return _volume_state(ec2, volume_id) in states


def _session_filter(session_id: str | None) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [
        {"Name": f"tag:{ROLE_KEY}", "Values": [WORKER_ROLE]},
        installation.installation_filter(),  # never another installation's workers
    ]
    if session_id is not None:
        filters.append({"Name": f"tag:{tagcodec.SESSION_KEY}", "Values": [session_id]})
    return filters


def _session_volumes(ec2: Any, session_id: str | None) -> list[dict[str, Any]]:
    return list(ec2.describe_volumes(Filters=_session_filter(session_id))["Volumes"])


def _session_instances(ec2: Any, session_id: str | None) -> list[dict[str, Any]]:
    filters = [
        *_session_filter(session_id),
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def release(
    session_id: str,
    region: str,
    role_arn: str | None,
    secret_name: str | None = None,
    only_instance_id: str | None = None,
    heartbeat: Callable[[str], None] = lambda _: None,
    keep_volumes: bool = False,
) -> ReleaseWorkerOutput:
    """Terminate the session's workers and delete their volumes (and the session secret);
    with `keep_volumes` (one lost instance) its volumes stay, for the next worker to attach.
    Idempotent: what is already gone is skipped."""
    ec2 = aws.client("ec2", region, role_arn)
    out = ReleaseWorkerOutput()
    instances = [
        i
        for i in _session_instances(ec2, session_id)
        if only_instance_id is None or i["InstanceId"] == only_instance_id
    ]
    if instances:
        ids = [i["InstanceId"] for i in instances]
        ec2.terminate_instances(InstanceIds=ids)
        log.info("worker instances terminated: %s", ", ".join(ids))
        out.instances_terminated = ids
    for volume in [] if keep_volumes and only_instance_id else _session_volumes(ec2, session_id):
        attached = [a.get("InstanceId") for a in volume.get("Attachments", [])]
        if only_instance_id is not None and only_instance_id not in attached:
            continue
        volume_id = volume["VolumeId"]
        if _volume_state(ec2, volume_id) == "in-use":
            try:
                ec2.detach_volume(VolumeId=volume_id, Force=True)
            except Exception as exc:
                if not aws.error_code(exc).startswith("IncorrectState"):
                    raise
        _wait(
            functools.partial(_volume_in, ec2, volume_id, ("available", "deleted")),
            f"detach of {volume_id}",
            heartbeat=heartbeat,
        )
        try:
            ec2.delete_volume(VolumeId=volume_id)
        except Exception as exc:
            if aws.error_code(exc) != "InvalidVolume.NotFound":
                raise
        log.info("volume %s deleted", volume_id)
        out.volumes_deleted.append(volume_id)
    if secret_name and only_instance_id is None:
        delete_secret(region, secret_name)
    return out


def delete_secret(region: str, secret_name: str) -> bool:
    """Delete a session secret, in the backup account, where `put_secret` writes it."""
    sm = aws.client("secretsmanager", region)
    try:
        sm.delete_secret(SecretId=secret_name_of(secret_name), ForceDeleteWithoutRecovery=True)
    except sm.exceptions.ResourceNotFoundException:
        return False
    log.info("session secret %s deleted in %s", secret_name, region)
    return True


def sessions_with_resources(region: str, role_arn: str | None) -> dict[str, list[str]]:
    """Session id -> worker instance and volume ids still present (for the janitor)."""
    ec2 = aws.client("ec2", region, role_arn)
    found: dict[str, list[str]] = {}
    for inst in _session_instances(ec2, None):
        sid = tagcodec.tag_value(inst.get("Tags"), tagcodec.SESSION_KEY)
        if sid:
            found.setdefault(sid, []).append(inst["InstanceId"])
    for vol in _session_volumes(ec2, None):
        sid = tagcodec.tag_value(vol.get("Tags"), tagcodec.SESSION_KEY)
        if sid:
            found.setdefault(sid, []).append(vol["VolumeId"])
    return found
