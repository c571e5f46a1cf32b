"""Policy files: a valid example, and every kind of invalid policy gives one line naming the field
(and, for YAML, the line), through the library and through `ec2backup policy validate`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ec2backup.policy import Policy, PolicyError, check_cron, load_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "policy-prod.yaml"
BASE = """\
name: prod
selection:
  tags: {env: prod}
  regions: [us-east-1]
schedule:
  cron: "0 3 * * *"
snapshots:
  retention: {count: 7}
image_backup:
  repository: s3://bucket/repo
"""


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_policy_is_valid() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.name == "prod" and policy.priority == 10
    assert policy.selection.regions == ["us-east-1", "eu-west-1"]
    assert policy.schedule.cron_expressions() == ["0 3 * * *"]
    assert policy.image_backup is not None and policy.image_backup.retention.yearly == 2


@pytest.mark.parametrize(
    ("change", "field", "line"),
    [
        (
            ("  retention: {count: 7}", "  retention: {count: 7}\n  colour: blue"),
            "snapshots.colour",
            9,
        ),
        (('  cron: "0 3 * * *"', '  cron: "0 25 * * *"'), "schedule.cron", 6),
        (('  cron: "0 3 * * *"', '  cron: "every day"'), "schedule.cron", 6),
        (("{count: 7}", "{count: 0}"), "snapshots.retention.count", 8),
        (("[us-east-1]", "[us-east-1, mars-north-1]"), "selection.regions", 4),
        (("  repository: s3://bucket/repo", "  repository: ''"), "image_backup.repository", 10),
        (
            ("image_backup:\n  repository: s3://bucket/repo\n", "image_backup: {}\n"),
            "image_backup.repository",
            9,
        ),
        (("name: prod", "name: Prod Policy"), "name", 1),
    ],
)
def test_invalid_policies_name_the_field_and_line(
    tmp_path: Path, change: tuple[str, str], field: str, line: int
) -> None:
    old, new = change
    assert old in BASE
    path = _write(tmp_path, BASE.replace(old, new))
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    message = str(exc.value)
    assert "\n" not in message
    assert f"{path}:{line}: {field}:" in message, message


def test_schedule_needs_exactly_one_kind(tmp_path: Path) -> None:
    path = _write(
        tmp_path, BASE.replace('  cron: "0 3 * * *"', '  cron: "0 3 * * *"\n  daily: ["04:00"]')
    )
    with pytest.raises(PolicyError, match="schedule: give exactly one of cron, daily, weekly"):
        load_policy(path)


def test_weekly_and_daily_become_cron(tmp_path: Path) -> None:
    weekly = load_policy(
        _write(
            tmp_path,
            BASE.replace('  cron: "0 3 * * *"', "  weekly: {days: [sun, wed], time: '22:30'}"),
        )
    )
    assert weekly.schedule.cron_expressions() == ["30 22 * * 0,3"]
    daily = load_policy(
        _write(
            tmp_path, BASE.replace('  cron: "0 3 * * *"', "  daily: ['01:05', '13:00']"), "d.yaml"
        )
    )
    assert daily.schedule.cron_expressions() == ["5 1 * * *", "0 13 * * *"]


def test_json_policies_and_schema(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLE)
    path = _write(tmp_path, policy.model_dump_json(), "p.json")
    assert load_policy(path) == policy
    bad = _write(tmp_path, policy.model_dump_json().replace('"prod"', '"PROD"', 1), "bad.json")
    with pytest.raises(PolicyError, match=r"bad\.json: name:"):
        load_policy(bad)
    assert "selection" in Policy.model_json_schema()["properties"]


@pytest.mark.parametrize("cron", ["*/15 * * * *", "0 3 1-7 * mon", "5,35 0-6/2 * 1,6 0"])
def test_cron_accepts_common_forms(cron: str) -> None:
    assert check_cron(cron) == cron


def test_cli_validate(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "policy", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "policy prod is valid" in ok.stdout
    bad = _write(tmp_path, BASE.replace("{count: 7}", "{count: 0}"))
    out = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "policy", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and ":8: snapshots.retention.count" in lines[0]
    )


def test_tag_values_read_as_numbers_or_booleans_are_taken_as_written(tmp_path: Path) -> None:
    text = BASE.replace("tags: {env: prod}", "tags: {env: prod, year: 2024, backup: yes}")
    policy = load_policy(_write(tmp_path, text))
    assert policy.selection.tags == {"env": "prod", "year": "2024", "backup": "true"}
    nested = BASE.replace("tags: {env: prod}", "tags: {env: [a, b]}")
    with pytest.raises(PolicyError, match=r"selection\.tags\.env"):
        load_policy(_write(tmp_path, nested, "n.yaml"))


ARCHIVE = """\
archive:
  schedule: {cron: "0 5 1 * *"}
  repository: s3://archive-bucket/prod
  storage_class: GLACIER
  retention: {monthly: 12, yearly: 3}
"""


def test_archive_section(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, BASE + ARCHIVE))
    assert policy.archive is not None and policy.archive.retention.yearly == 3
    assert policy.archive.schedule.cron_expressions() == ["0 5 1 * *"]
    assert policy.archive.allow_early_deletion is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("storage_class: GLACIER", "storage_class: STANDARD"), "archive.storage_class"),
        (("s3://archive-bucket/prod", "/tmp/archive"), "is not an s3://bucket/prefix URL"),
        (("{monthly: 12, yearly: 3}", "{monthly: 0}"), "retention keeps nothing"),
        (('{cron: "0 5 1 * *"}', '{cron: "0 5 32 * *"}'), "archive.schedule.cron"),
    ],
)
def test_invalid_archive_sections(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(_write(tmp_path, BASE + ARCHIVE.replace(old, new)))


def test_archive_needs_image_backups(tmp_path: Path) -> None:
    text = BASE.replace("image_backup:\n  repository: s3://bucket/repo\n", "") + ARCHIVE
    with pytest.raises(PolicyError, match="archive copies image-level backups"):
        load_policy(_write(tmp_path, text))


TWO_TARGETS = (
    BASE
    + """\
replication:
  targets:
    - region: eu-west-1
    - region: us-west-2
      account_role_arn: arn:aws:iam::222222222222:role/ec2backup
      retention: {days: 3}
"""
)


def test_every_replication_target_and_worker_setting_is_kept(tmp_path: Path) -> None:
    workers = "  workers:\n    us-east-1:\n      security_group_ids: [sg-0123abcd, sg-0456ef01]\n"
    policy = load_policy(_write(tmp_path, BASE + workers + TWO_TARGETS[len(BASE) :]))
    assert policy.replication is not None and policy.image_backup is not None
    assert [t.region for t in policy.replication.targets] == ["eu-west-1", "us-west-2"]
    assert policy.replication.targets[1].retention is not None
    groups = policy.image_backup.workers["us-east-1"].security_group_ids
    assert groups == ["sg-0123abcd", "sg-0456ef01"]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            TWO_TARGETS.replace("us-west-2\n      account_role_arn", "eu-west-1\n      x_").replace(
                "      x_: arn:aws:iam::222222222222:role/ec2backup\n", ""
            ),
            "replication.targets",
            "two targets in eu-west-1 for the backup account",
        ),
        (
            BASE + "  workers:\n    us-east-1:\n      security_group_ids: [default]\n",
            "image_backup.workers.us-east-1.security_group_ids",
            "'default' is not a security group id",
        ),
        (
            BASE
            + "  workers:\n    us-east-1:\n      security_group_ids: [sg-0123abcd, sg-0123abcd]\n",
            "image_backup.workers.us-east-1.security_group_ids",
            "listed twice",
        ),
        (
            BASE + "  workers:\n    us-east-1:\n      subnet_id: my-subnet\n",
            "image_backup.workers.us-east-1.subnet_id",
            "'my-subnet' is not a subnet id",
        ),
    ],
)
def test_settings_that_cannot_take_effect_are_refused(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, text))
    assert f": {field}: " in str(err.value) and message in str(err.value), str(err.value)


NOTIFY = "notify:\n  sns_topic_arn: arn:aws:sns:us-east-1:123456789012:backups\n"


@pytest.mark.parametrize(
    ("text", "reactions"),
    [
        ("on_anomaly: notify\n", ["notify"]),
        ("on_anomaly: [notify, lock_last_clean]\n", ["notify", "lock-last-clean"]),
        ("on_anomaly: [lock-last-clean]\nanomaly_hold_days: 60\n", ["lock-last-clean"]),
    ],
)
def test_on_anomaly_takes_one_reaction_or_a_list(
    tmp_path: Path, text: str, reactions: list[str]
) -> None:
    policy = load_policy(_write(tmp_path, BASE + NOTIFY + text))
    assert policy.on_anomaly == reactions
    assert policy.anomaly_hold_days == (60 if "60" in text else 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "on_anomaly: notify\n", "on_anomaly: notify publishes to notify.sns_topic_arn"),
        (BASE + "on_anomaly: [lock-everything]\n", "on_anomaly.0"),
        (
            BASE.replace("image_backup:\n  repository: s3://bucket/repo\n", "")
            + "on_anomaly: [lock-last-clean]\n",
            "on_anomaly reacts to the ransomware signal of image-level backups",
        ),
        (BASE + "  object_lock: forever\n", "image_backup.object_lock"),
    ],
)
def test_invalid_anomaly_reactions_and_lock_requirements(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(_write(tmp_path, text))
