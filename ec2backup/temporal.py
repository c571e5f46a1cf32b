"""Temporal client factory: one data converter (pydantic) for every client and worker."""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
# The orchestrator's task queue: workflows and control-plane activities.
TASK_QUEUE = "ec2backup"


def temporal_address(explicit: str | None = None) -> str:
    return explicit or os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    return await Client.connect(
        temporal_address(address),
        namespace=namespace or os.environ.get("TEMPORAL_NAMESPACE") or DEFAULT_NAMESPACE,
        data_converter=pydantic_data_converter,
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
