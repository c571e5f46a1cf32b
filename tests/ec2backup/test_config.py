"""The installation configuration (ec2backup.config): file formats, environment overrides,
one line per error naming the key, per-Region worker settings; and the worker user-data."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ec2backup import config, userdata
from ec2backup.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]

GOOD = """
home_region = "eu-west-1"
regions = ["eu-west-1", "us-east-1"]

[temporal]
profile = "prod"
namespace = "backups"

[[accounts]]
id = "111122223333"
role_arn = "arn:aws:iam::111122223333:role/ec2backup-production"
external_id = "abc"
name = "shop"

[[repositories]]
url = "s3://backups/main"
password_secret = "ec2backup/repository-password"

[[repositories]]
url = "s3://backups/kms"
kms = true

[worker]
subnet_ids = ["subnet-a", "subnet-b"]
security_group_ids = ["sg-1"]
max_lifetime_minutes = 240

[workers.us-east-1]
ami = "ami-0123456789abcdef0"
subnet_id = "subnet-c"
instance_types = { backup = "c6i.xlarge" }
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("EC2BACKUP_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_complete_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EC2BACKUP_CONFIG", str(_write(tmp_path, GOOD)))
    cfg = config.load()
    assert cfg.home_region == "eu-west-1"
    assert cfg.temporal.profile == "prod"
    assert cfg.account_for_role("arn:aws:iam::111122223333:role/ec2backup-production")
    account = cfg.account_for_role("arn:aws:iam::111122223333:role/other")
    assert account is not None and account.external_id == "abc"  # by account id
    repo = cfg.repository("s3://backups/main/")
    assert repo is not None and repo.password_secret == "ec2backup/repository-password"
    eu = cfg.worker_for("eu-west-1")
    assert eu.subnet_ids == ["subnet-a", "subnet-b"] and eu.ami is None
    assert eu.instance_profile == config.DEFAULT_WORKER_INSTANCE_PROFILE
    assert eu.max_lifetime_minutes == 240
    us = cfg.worker_for("us-east-1")
    # the Region's keys win, the defaults fill in the rest
    assert us.ami == "ami-0123456789abcdef0" and us.subnet_ids == ["subnet-c"]
    assert us.security_group_ids == ["sg-1"] and us.instance_types == {"backup": "c6i.xlarge"}


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EC2BACKUP_CONFIG", str(_write(tmp_path, GOOD)))
    monkeypatch.setenv("EC2BACKUP_HOME_REGION", "us-west-2")
    monkeypatch.setenv("EC2BACKUP_WORKER__SECURITY_GROUP_IDS", '["sg-env"]')
    monkeypatch.setenv("EC2BACKUP_WORKER_INSTANCE_PROFILE", "legacy-profile")  # older variable
    cfg = config.load()
    assert cfg.home_region == "us-west-2"
    assert cfg.regions == ["eu-west-1", "us-east-1"]  # the file's, untouched
    eu = cfg.worker_for("eu-west-1")
    assert eu.security_group_ids == ["sg-env"] and eu.instance_profile == "legacy-profile"


def test_no_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.config_path() is None
    cfg = config.load()
    assert cfg.home_region is None and cfg.accounts == [] and cfg.janitor.enabled
    assert cfg.worker_for("eu-west-1").max_lifetime_minutes == (
        config.DEFAULT_WORKER_MAX_LIFETIME_MINUTES
    )


def test_yaml_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    yaml_text = "home_region: ap-southeast-2\nworker:\n  ami_ssm_parameter: /my/ami\n"
    monkeypatch.setenv("EC2BACKUP_CONFIG", str(_write(tmp_path, yaml_text, "c.yaml")))
    cfg = config.load()
    assert cfg.worker_for("ap-southeast-2").ami_ssm_parameter == "/my/ami"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('home_region = "eu-west"\n', "home_region: 'eu-west' is not a Region name"),
        ("[worker]\nsubnett_id = 'x'\n", "worker.subnett_id: unknown key"),
        ("[worker]\nmax_lifetime_minutes = 1\n", "worker.max_lifetime_minutes:"),
        (
            '[[accounts]]\nid = "12"\nrole_arn = "arn:aws:iam::111122223333:role/r"\n',
            "accounts.0.id: must be a 12-digit AWS account id",
        ),
        ('[[accounts]]\nid = "111122223333"\nrole_arn = "r"\n', "accounts.0.role_arn:"),
        ('[[repositories]]\nurl = "http://x"\n', "repositories.0.url:"),
        ("[workers.mars]\nami = 'a'\n", "workers: 'mars' is not a Region name"),
        ("home_region = \n", "configuration"),  # a TOML syntax error
    ],
)
def test_each_error_is_one_line_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    monkeypatch.setenv("EC2BACKUP_CONFIG", str(path))
    with pytest.raises(UserError) as err:
        config.load()
    message = str(err.value)
    assert expected in message, message
    assert str(path) in message
    assert len(message.splitlines()) == 1, message


def test_cli_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    """`--config` with a bad key: one line on stderr, exit 2 (a user error), before anything
    is done."""
    path = _write(tmp_path, "[janitor]\ninterval_minutes = 1\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "--config", str(path), "doctor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"error: configuration {path}: janitor.interval_minutes: "
        + lines[0].split("janitor.interval_minutes: ", 1)[1]
    ], done.stderr


def test_render_toml_round_trips() -> None:
    data = {
        "home_region": "us-east-1",
        "regions": ["us-east-1"],
        "temporal": {"address": "127.0.0.1:7233", "namespace": "default"},
        "accounts": [{"id": "111122223333", "role_arn": "arn:aws:iam::111122223333:role/r"}],
        "workers": {"us-east-1": {"ami": "ami-1", "security_group_ids": ["sg-1"]}},
    }
    parsed = tomllib.loads(config.render_toml(data))
    assert parsed == data
    config.parse(parsed)  # and it is a valid configuration


def test_example_configuration_validates() -> None:
    example = REPO_ROOT / "deploy" / "config.example.toml"
    config.parse(tomllib.loads(example.read_text()), str(example))


# ---- the worker's user-data ------------------------------------------------------------
def test_user_data_installs_and_supervises_the_agent() -> None:
    script = userdata.render_agent_user_data(
        "temporal.example:7233",
        "backups",
        max_lifetime_minutes=90,
        wheelhouse_url="s3://bucket/worker-image/0.1.0/",
        credentials_secret="ec2backup/agent-credentials",
        credentials_region="eu-west-1",
    )
    assert script.startswith("#!/bin/bash\n" + userdata.AGENT_MARKER)
    assert "shutdown -h +90 " in script
    assert "--no-index --find-links" in script and "s3://bucket/worker-image/0.1.0/" in script
    assert "Restart=always" in script and "systemctl enable --now ec2backup-agent.service" in script
    argv = userdata.parse_agent_command(script)
    assert argv == [
        "agent",
        "--task-queue",
        userdata.HOST_TASK_QUEUE_TEMPLATE,
        "--temporal-address",
        "temporal.example:7233",
        "--namespace",
        "backups",
        "--credentials-secret",
        "ec2backup/agent-credentials",
        "--credentials-region",
        "eu-west-1",
    ]
    assert userdata.max_lifetime_minutes(script) == 90


def test_pre_built_image_user_data_and_the_older_form() -> None:
    script = userdata.render_agent_user_data("t:7233")
    assert "dnf install" not in script and "shutdown" not in script
    assert userdata.parse_agent_command(script) is not None
    older = "#!/bin/bash\n# ec2backup-worker-agent v1\nexec ec2backup agent --task-queue q\n"
    assert userdata.parse_agent_command(older) == ["agent", "--task-queue", "q"]
    assert userdata.parse_agent_command("#!/bin/bash\necho hi\n") is None
