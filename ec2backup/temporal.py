"""Temporal client factory: one data converter (pydantic) for every client and worker.

The connection comes from the SDK's environment configuration (`temporalio.envconfig`), the
same as the `temporal` CLI's: `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`,
`TEMPORAL_TLS`, `TEMPORAL_TLS_CLIENT_CERT_PATH`, `TEMPORAL_TLS_CLIENT_KEY_PATH` and
`TEMPORAL_TLS_SERVER_CA_CERT_PATH` (mTLS), `TEMPORAL_PROFILE`, and the TOML profiles of
`TEMPORAL_CONFIG_FILE` (default `~/.config/temporalio/temporal.toml`). The installation
configuration's `[temporal]` section names the profile and file when those variables do not,
and gives the address and namespace when neither the variables nor the profile do. An explicit
`--address` / `--namespace` wins over everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.envconfig import ClientConfigProfile

from ec2backup.errors import UserError

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
# The orchestrator's task queue: workflows and control-plane activities.
TASK_QUEUE = "ec2backup"


def connect_config(address: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """`Client.connect` keyword arguments from the environment configuration (module doc)."""
    from ec2backup import config as installation_config

    settings = installation_config.load().temporal
    config_file = os.environ.get("TEMPORAL_CONFIG_FILE") or settings.config_file
    try:
        profile = ClientConfigProfile.load(
            os.environ.get("TEMPORAL_PROFILE") or settings.profile,
            config_source=Path(config_file).expanduser() if config_file else None,
        )
    except Exception as exc:  # a malformed TOML file, a missing certificate file, ...
        raise UserError(f"Temporal configuration: {exc}") from exc
    config: dict[str, Any] = dict(profile.to_client_connect_config())
    config["target_host"] = (
        address or config.get("target_host") or settings.address or DEFAULT_TEMPORAL_ADDRESS
    )
    config["namespace"] = (
        namespace or config.get("namespace") or settings.namespace or DEFAULT_NAMESPACE
    )
    return config


def credentials_overrides(secret: dict[str, Any]) -> dict[str, Any]:
    """`Client.connect` arguments from the agents' credentials secret (`temporal.
    agent_credentials_secret`): `api_key`, and/or PEM `tls_client_cert` + `tls_client_key`
    (mTLS), `tls_server_ca_cert`, `tls_server_name`; `tls` (bool) forces TLS on or off."""
    from temporalio.service import TLSConfig

    unknown = set(secret) - {
        "api_key",
        "tls",
        "tls_client_cert",
        "tls_client_key",
        "tls_server_ca_cert",
        "tls_server_name",
    }
    if unknown:
        raise UserError(f"Temporal credentials secret: unknown keys {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if secret.get("api_key"):
        out["api_key"] = str(secret["api_key"])
    pems = {
        k: str(secret[k]).encode()
        for k in ("tls_client_cert", "tls_client_key", "tls_server_ca_cert")
        if secret.get(k)
    }
    if ("tls_client_cert" in pems) != ("tls_client_key" in pems):
        raise UserError(
            "Temporal credentials secret: tls_client_cert and tls_client_key go together"
        )
    tls = secret.get("tls")
    if pems or secret.get("tls_server_name") or tls is True or (tls is None and "api_key" in out):
        # An API key travels over TLS only (Temporal Cloud), unless the secret says otherwise.
        out["tls"] = TLSConfig(
            client_cert=pems.get("tls_client_cert"),
            client_private_key=pems.get("tls_client_key"),
            server_root_ca_cert=pems.get("tls_server_ca_cert"),
            domain=secret.get("tls_server_name"),
        )
    elif tls is False:
        out["tls"] = False
    return out


def agent_credentials(secret_id: str, region: str) -> dict[str, Any]:
    """The agent's Temporal credentials, read with the instance role (never from user-data)."""
    import json

    from ec2backup import aws

    try:
        value = aws.client("secretsmanager", region).get_secret_value(SecretId=secret_id)
        secret = json.loads(value["SecretString"])
    except Exception as exc:
        raise UserError(
            f"Temporal credentials secret {secret_id} ({region}): {' '.join(str(exc).split())}"
        ) from exc
    if not isinstance(secret, dict):
        raise UserError(f"Temporal credentials secret {secret_id}: must be a JSON object")
    return credentials_overrides(secret)


def temporal_address(explicit: str | None = None) -> str:
    return str(connect_config(explicit)["target_host"])


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Client:
    from ec2backup import observability, payloads

    config = {
        **connect_config(address, namespace),
        **observability.connect_options(),
        **(overrides or {}),
    }
    return await Client.connect(
        config.pop("target_host"), **config, data_converter=payloads.data_converter()
    )


# Custom search attributes set on every workflow we start (registered by `ec2backup setup`; the
# lab's dev server starts with them), so `temporal workflow list --query "PolicyName='prod'"`
# finds a policy's sessions. Name -> type (as `temporal operator search-attribute create`).
# `Outcome` (succeeded, partial, failed) is set when a run ends, also when it fails or is
# canceled (`Outcome!='succeeded'` is what to alert on). `Region` and `AccountId` are lists
# (a policy run or a replicating session spans several; `Region='us-east-1'` matches a list
# holding it), set once the run's input is authorized. Search attributes are not encrypted by
# the payload codec: they hold names, ids and Regions only, never a role ARN, tag value or
# repository URL.
SEARCH_ATTRIBUTES = {
    "PolicyName": "Keyword",
    "InstanceId": "Keyword",
    "SessionKind": "Keyword",
    "Outcome": "Keyword",
    "Region": "KeywordList",
    "AccountId": "KeywordList",
}
POLICY_NAME = SearchAttributeKey.for_keyword("PolicyName")
INSTANCE_ID = SearchAttributeKey.for_keyword("InstanceId")
SESSION_KIND = SearchAttributeKey.for_keyword("SessionKind")
OUTCOME = SearchAttributeKey.for_keyword("Outcome")
REGION = SearchAttributeKey.for_keyword_list("Region")
ACCOUNT_ID = SearchAttributeKey.for_keyword_list("AccountId")


def search_attributes(
    kind: str, policy: str, instance_id: str | None = None
) -> TypedSearchAttributes:
    pairs = [SearchAttributePair(SESSION_KIND, kind), SearchAttributePair(POLICY_NAME, policy)]
    if instance_id:
        pairs.append(SearchAttributePair(INSTANCE_ID, instance_id))
    return TypedSearchAttributes(pairs)
