"""The Temporal connection comes from the SDK's environment configuration, as the `temporal`
CLI's does (issue 15): TEMPORAL_* variables, TOML profiles, TLS, mTLS and API keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ec2backup.errors import UserError
from ec2backup.temporal import DEFAULT_NAMESPACE, DEFAULT_TEMPORAL_ADDRESS, connect_config

VARIABLES = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_TLS",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/temporalio/temporal.toml


def test_defaults_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert connect_config() == {
        "target_host": DEFAULT_TEMPORAL_ADDRESS,
        "namespace": DEFAULT_NAMESPACE,
    }
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "backups")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-1")
    config = connect_config()
    assert config["target_host"] == "temporal.internal:7233"
    assert config["namespace"] == "backups"
    assert config["api_key"] == "key-1" and config["tls"] is True  # an API key implies TLS
    # explicit flags win
    explicit = connect_config("other:7233", "ns2")
    assert (explicit["target_host"], explicit["namespace"]) == ("other:7233", "ns2")


def test_toml_profiles_with_api_key_and_mtls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
    toml = tmp_path / "temporal.toml"
    toml.write_text(
        '[profile.cloud]\naddress = "prod.a1b2c.tmprl.cloud:7233"\n'
        'namespace = "prod.a1b2c"\napi_key = "cloud-key"\n\n'
        '[profile.mtls]\naddress = "temporal.corp:7233"\nnamespace = "ops"\n'
        f'[profile.mtls.tls]\nclient_cert_path = "{cert}"\nclient_key_path = "{key}"\n'
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(toml))
    monkeypatch.setenv("TEMPORAL_PROFILE", "cloud")
    cloud = connect_config()
    assert cloud["target_host"] == "prod.a1b2c.tmprl.cloud:7233"
    assert cloud["namespace"] == "prod.a1b2c" and cloud["api_key"] == "cloud-key"
    monkeypatch.setenv("TEMPORAL_PROFILE", "mtls")
    mtls = connect_config()
    assert mtls["target_host"] == "temporal.corp:7233"
    tls = mtls["tls"]
    assert tls.client_cert == cert.read_bytes() and tls.client_private_key == key.read_bytes()


def test_a_bad_configuration_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text("[profile.default\naddress = ")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(toml))
    with pytest.raises(UserError, match="Temporal configuration"):
        connect_config()


def test_installation_configuration_names_the_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`[temporal]` of the installation configuration chooses the profile and file; the
    TEMPORAL_* variables still win over it."""
    toml = tmp_path / "temporal.toml"
    toml.write_text('[profile.prod]\naddress = "temporal.prod:7233"\nnamespace = "prod"\n')
    installation = tmp_path / "ec2backup.toml"
    installation.write_text(
        f'[temporal]\nprofile = "prod"\nconfig_file = "{toml}"\naddress = "fallback:7233"\n'
    )
    monkeypatch.setenv("EC2BACKUP_CONFIG", str(installation))
    config = connect_config()
    assert (config["target_host"], config["namespace"]) == ("temporal.prod:7233", "prod")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "override")
    assert connect_config()["namespace"] == "override"


def test_agent_credentials_secret_reaches_the_connect_options() -> None:
    from ec2backup.temporal import credentials_overrides

    cloud = credentials_overrides({"api_key": "k"})
    assert cloud["api_key"] == "k" and cloud["tls"].client_cert is None  # an API key: TLS
    plain = credentials_overrides({"api_key": "k", "tls": False})
    assert plain["tls"] is False
    mtls = credentials_overrides(
        {"tls_client_cert": "CERT", "tls_client_key": "KEY", "tls_server_ca_cert": "CA"}
    )
    tls = mtls["tls"]
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (
        b"CERT",
        b"KEY",
        b"CA",
    )
    with pytest.raises(UserError, match="go together"):
        credentials_overrides({"tls_client_cert": "CERT"})
    with pytest.raises(UserError, match="unknown keys password"):
        credentials_overrides({"password": "x"})
