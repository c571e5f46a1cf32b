"""Temporal client factory: one data converter (pydantic) for every client and worker.

The connection comes from the SDK's environment configuration (`temporalio.envconfig`), the
same as the `temporal` CLI's: `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`,
`TEMPORAL_TLS`, `TEMPORAL_TLS_CLIENT_CERT_PATH`, `TEMPORAL_TLS_CLIENT_KEY_PATH` and
`TEMPORAL_TLS_SERVER_CA_CERT_PATH` (mTLS), `TEMPORAL_PROFILE`, and the TOML profiles of
`TEMPORAL_CONFIG_FILE` (default `~/.config/temporalio/temporal.toml`). An explicit `--address`
/ `--namespace` wins.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile

from ec2backup.errors import UserError

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
# The orchestrator's task queue: workflows and control-plane activities.
TASK_QUEUE = "ec2backup"


def connect_config(address: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """`Client.connect` keyword arguments from the environment configuration (module doc)."""
    try:
        profile = ClientConfigProfile.load()
    except Exception as exc:  # a malformed TOML file, a missing certificate file, ...
        raise UserError(f"Temporal configuration: {exc}") from exc
    config: dict[str, Any] = dict(profile.to_client_connect_config())
    config["target_host"] = address or config.get("target_host") or DEFAULT_TEMPORAL_ADDRESS
    config["namespace"] = namespace or config.get("namespace") or DEFAULT_NAMESPACE
    return config


def temporal_address(explicit: str | None = None) -> str:
    return str(connect_config(explicit)["target_host"])


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    config = connect_config(address, namespace)
    return await Client.connect(
        config.pop("target_host"), **config, data_converter=pydantic_data_converter
    )


# Custom search attributes set on every workflow we start (registered by `lab up`; on a real
# cluster: `temporal operator search-attribute create --name PolicyName --type Keyword` ...), so
# `temporal workflow list --query "PolicyName='prod'"` finds a policy's sessions.
POLICY_NAME = SearchAttributeKey.for_keyword("PolicyName")
INSTANCE_ID = SearchAttributeKey.for_keyword("InstanceId")
SESSION_KIND = SearchAttributeKey.for_keyword("SessionKind")


def search_attributes(
    kind: str, policy: str, instance_id: str | None = None
) -> TypedSearchAttributes:
    pairs = [SearchAttributePair(SESSION_KIND, kind), SearchAttributePair(POLICY_NAME, policy)]
    if instance_id:
        pairs.append(SearchAttributePair(INSTANCE_ID, instance_id))
    return TypedSearchAttributes(pairs)
