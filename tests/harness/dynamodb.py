"""DynamoDB tables for tests, created from template.yaml's own resource definition.

Tests never restate the table: they read its `Properties` from the template (CloudFormation
tags such as `!Ref` are kept as `{"Ref": ...}`-style dicts), translate them to the
CreateTable / UpdateTimeToLive / UpdateContinuousBackups calls CloudFormation would make,
and run them against moto (in process, or moto's server through an endpoint URL). A
property the translation does not know fails loudly, so the test table cannot drift from
the deployed one unnoticed. Reuse `create_table` for any table the template adds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
CHAT_TABLE = "ChatTable"
_TRANSLATED = {
    "BillingMode",
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "TimeToLiveSpecification",
    "PointInTimeRecoverySpecification",
    "SSESpecification",
}
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _tagged(loader: Any, suffix: str, node: Node) -> dict[str, Any]:
    """`!Sub x` -> {"Fn::Sub": x}: keep the intrinsic, visibly, instead of failing on the tag."""
    value: Any
    if isinstance(node, ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = None
    return {suffix if suffix == "Ref" else f"Fn::{suffix}": value}


class _TemplateConstructor(SafeConstructor):
    """Its own class: registering the tag on SafeConstructor would change every YAML loader in the process."""


_TemplateConstructor.add_multi_constructor("!", _tagged)


def template() -> dict[str, Any]:
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _TemplateConstructor
    data: dict[str, Any] = yaml.load(TEMPLATE)
    return data


def table_properties(logical_id: str = CHAT_TABLE) -> dict[str, Any]:
    resource = template()["Resources"][logical_id]
    assert resource["Type"] == "AWS::DynamoDB::Table", resource["Type"]
    properties: dict[str, Any] = resource["Properties"]
    return properties


def create_table(client: Any, name: str, logical_id: str = CHAT_TABLE) -> dict[str, Any]:
    """Create table `name` as the template defines `logical_id`; returns its properties."""
    properties = table_properties(logical_id)
    unknown = set(properties) - _TRANSLATED
    assert not unknown, f"tests/harness/dynamodb.py cannot translate {sorted(unknown)} yet: add them"
    request: dict[str, Any] = {
        "TableName": name,
        "BillingMode": properties["BillingMode"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
    }
    if "GlobalSecondaryIndexes" in properties:
        request["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
    if properties.get("SSESpecification", {}).get("SSEEnabled"):
        request["SSESpecification"] = {"Enabled": True}
    client.create_table(**request)
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    ttl = properties.get("TimeToLiveSpecification")
    if ttl:
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": ttl["Enabled"]}
        )
    pitr = properties.get("PointInTimeRecoverySpecification")
    if pitr:
        client.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": pitr["PointInTimeRecoveryEnabled"]},
        )
    return properties


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1 (for apps running as their own processes); yields its endpoint URL.

    Its tables live in this process's moto backend, which outlives the server: use unique table names."""
    from moto.server import ThreadedMotoServer

    from tests.harness.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    """moto's server as its own process (its CPU not shared with the caller's), one request at a time
    (tests/harness/moto_serial.py says why); yields its endpoint URL."""
    import sys

    from tests.harness.ports import free_port
    from tests.harness.processes import ChildProcess, wait_for_port

    port = free_port()
    command = [sys.executable, "-m", "tests.harness.moto_serial", "--port", str(port)]
    with ChildProcess(command, {**os.environ, **TEST_CREDENTIALS}) as server:
        wait_for_port(port, server)
        yield f"http://127.0.0.1:{port}"


def client(endpoint_url: str | None = None) -> Any:
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=TEST_CREDENTIALS["AWS_SESSION_TOKEN"],
    )


def server_env(endpoint_url: str, table: str) -> dict[str, str]:
    """Environment (to add to the app's) for an app process using `table` on moto's server at `endpoint_url`."""
    return {
        **TEST_CREDENTIALS,
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint_url,
        "CHAT_STORE_URL": f"dynamodb://{table}",
    }


def main() -> None:
    """`python -m tests.harness.dynamodb --endpoint URL --table NAME`: the template's table on a local DynamoDB."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--endpoint", default="http://127.0.0.1:8000")
    parser.add_argument("--table", default="chat-local")
    options = parser.parse_args()
    create_table(client(options.endpoint), options.table)
    print(f"created {options.table} at {options.endpoint}: CHAT_STORE_URL=dynamodb://{options.table}")


if __name__ == "__main__":
    main()
