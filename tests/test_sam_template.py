"""The SAM template and the Lambda package, with SAM CLI's own tools (no Docker, no AWS)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from build_package import cold_path_modules
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar

from chat.config import Settings
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.sam_cli import ROOT, build_env, python313, sam_tool
from tools import cold_path


def run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(part) for part in command], capture_output=True, text=True, cwd=ROOT, check=False, **kwargs
    )


def test_sam_validate_lint_is_clean() -> None:
    result = run([sam_tool("sam"), "validate", "--lint", "--template", "template.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_is_clean() -> None:
    result = run([sam_tool("cfn-lint"), "template.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


def _plain(node: Any) -> Any:
    """ruamel's round-trip tree as plain data, CloudFormation's short tags spelled out (`!Ref x` -> {"Ref": x})."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, TaggedScalar):
        value: Any = node.value
    elif isinstance(node, dict):
        value = {key: _plain(item) for key, item in node.items()}
    elif isinstance(node, list):
        value = [_plain(item) for item in node]
    else:
        return node
    if not tag or not tag.startswith("!"):
        return value
    name = tag[1:]
    return {name if name in ("Ref", "Condition") else f"Fn::{name}": value}


TEMPLATE: dict[str, Any] = _plain(YAML(typ="rt").load(ROOT / "template.yaml"))


class Deploy:
    """The template's parameters and conditions resolved as CloudFormation would for one deploy."""

    def __init__(self, region: str = "us-east-1", partition: str = "aws", **overrides: str) -> None:
        defaults = {name: str(spec.get("Default", "")) for name, spec in TEMPLATE["Parameters"].items()}
        self.refs = {**defaults, **overrides, "AWS::Region": region, "AWS::Partition": partition}

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1 or not next(iter(node)).startswith(("Ref", "Condition", "Fn::")):
            return {key: self.value(item) for key, item in node.items()}
        ((function, argument),) = node.items()
        if function == "Ref":
            return self.refs.get(argument, {"Ref": argument})
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            return self.value(argument[0]) == self.value(argument[1])
        if function == "Fn::Not":
            return not self.value(argument[0])
        if function == "Fn::And":
            return all(self.value(item) for item in argument)
        if function == "Fn::Or":
            return any(self.value(item) for item in argument)
        if function == "Fn::If":
            name, then, otherwise = argument
            return self.value(then if self.condition(name) else otherwise)
        return node

    def condition(self, name: str) -> bool:
        return bool(self.value(TEMPLATE["Conditions"][name]))

    def function(self, prop: str) -> Any:
        return self.value(TEMPLATE["Resources"]["ChatFunction"]["Properties"][prop])


NO_VALUE = {"Ref": "AWS::NoValue"}


def test_a_default_deploy_reserves_no_concurrency() -> None:
    """A reservation fails the first deploy on a new account (quota 10): it must be asked for."""
    assert Deploy().function("ReservedConcurrentExecutions") == NO_VALUE
    assert Deploy(ReservedConcurrency="25").function("ReservedConcurrentExecutions") == "25"
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for environment in ("default", "prod"):
        overrides = shlex.split(samconfig[environment]["deploy"]["parameters"]["parameter_overrides"])
        assert not [item for item in overrides if item.startswith("ReservedConcurrency=")], environment


@pytest.mark.parametrize(
    ("region", "partition", "setting", "applied"),
    [
        ("us-east-1", "aws", "Auto", "PublishedVersions"),
        ("eu-west-1", "aws", "Auto", "PublishedVersions"),
        ("ap-southeast-6", "aws", "Auto", "None"),  # Asia Pacific (New Zealand): no SnapStart
        ("ap-east-2", "aws", "Auto", "None"),  # Asia Pacific (Taipei): no SnapStart
        ("ap-east-2", "aws", "Enabled", "PublishedVersions"),  # asked for explicitly: the deploy says no
        ("us-east-1", "aws", "Disabled", "None"),
    ],
)
def test_snapstart_follows_the_regions_rule(region: str, partition: str, setting: str, applied: str) -> None:
    deploy = Deploy(region, partition, SnapStart=setting)
    assert deploy.function("SnapStart") == {"ApplyOn": applied}
    assert deploy.value(TEMPLATE["Outputs"]["SnapStart"]["Value"]) == applied


def test_samconfig_deploys_with_the_regions_rule() -> None:
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for environment in ("default", "prod"):
        overrides = shlex.split(samconfig[environment]["deploy"]["parameters"]["parameter_overrides"])
        assert "SnapStart=Auto" in overrides, environment


@pytest.fixture(scope="module")
def arm64_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    result = run([sam_tool("sam"), "build", "--build-dir", build_dir], env=build_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir / "ChatFunction"


def run_in(package: Path, code: str) -> str:
    """Run `code` with python3.13 on the package alone (isolated mode), as Lambda would; its output."""
    result = subprocess.run(
        [str(python313()), "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r}); {code}"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def files(package: Path) -> set[str]:
    return {str(path.relative_to(package)) for path in package.rglob("*") if path.is_file()}


def test_sam_build_makes_an_arm64_package_on_our_runtime(arm64_package: Path) -> None:
    shipped = files(arm64_package)
    assert "chat/handler.py" in shipped
    assert "chat/runtime/loop.py" in shipped
    assert os.access(arm64_package / "lambda-exec-wrapper", os.X_OK), "Lambda refuses a wrapper it cannot execute"
    extensions = [name for name in shipped if name.endswith(".so")]
    assert extensions
    assert all("aarch64" in name for name in extensions), extensions
    # Cold-path dependencies ship as bytecode only: nothing to compile on a read-only /var/task.
    for module in cold_path_modules():
        assert f"{module}.pyc" in shipped
        assert f"{module}.py" not in shipped


def test_the_handler_imports_from_the_built_package(arm64_package: Path, x86_64_twin: Path) -> None:
    def normalised(package: Path) -> set[str]:
        return {name.replace("aarch64", "ARCH").replace("x86_64", "ARCH") for name in files(package)}

    assert normalised(x86_64_twin) == normalised(arm64_package)
    probe = "import chat.handler, chat.runtime.loop; print(type(chat.handler.handler).__name__)"
    assert run_in(x86_64_twin, probe) == "Mangum"


def test_the_zipped_package_fits_lambda(arm64_package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(arm64_package.rglob("*")):
            zipped.write(path, path.relative_to(arm64_package))
    assert archive.stat().st_size < 50 * 1024 * 1024  # Lambda's limit for a directly uploaded zip
    with zipfile.ZipFile(archive) as zipped:
        shipped = set(zipped.namelist())
    # The chat page the app serves at `/` ships in the package, byte for byte.
    page_dir = ROOT / "functions" / "chat" / "chat" / "static"
    for name in ("index.html", "chat.css", "chat.js"):
        assert f"chat/static/{name}" in shipped
        assert zipped_bytes(archive, f"chat/static/{name}") == (page_dir / name).read_bytes()


def zipped_bytes(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as zipped:
        return zipped.read(name)


def test_the_cold_path_list_matches_what_the_package_imports(x86_64_twin: Path, fake: FakeOpenAI) -> None:
    """Only cold-path modules ship as bytecode; a stale list would compile modules in memory at cold start."""
    assert set(cold_path.record(x86_64_twin, fake.base_url)) == cold_path_modules(), (
        "functions/chat/cold_path.txt is stale: regenerate it with `.venv/bin/python -m tools.cold_path`"
    )


def test_tracebacks_from_the_package_name_lambda_paths(x86_64_twin: Path) -> None:
    """Sourceless bytecode carries the path it was compiled under: it must be /var/task, not the build dir."""
    probe = "import mangum.adapter as m; print(m.Mangum.__call__.__code__.co_filename)"
    assert run_in(x86_64_twin, probe) == "/var/task/mangum/adapter.py"


@pytest.mark.parametrize(("auth_mode", "chat_auth"), [("TOKEN", "keys"), ("AWS_IAM", "iam")])
def test_the_auth_mode_chooses_how_callers_are_identified(auth_mode: str, chat_auth: str) -> None:
    variables = Deploy(AuthMode=auth_mode).function("Environment")["Variables"]
    assert variables["CHAT_AUTH"] == chat_auth
    assert variables["CHAT_STORE_URL"] == {"Fn::Sub": "dynamodb://${ChatTable}"}  # the keys live in the table


def test_a_default_deploy_has_a_deployment_wide_daily_cap_and_no_per_caller_budget() -> None:
    variables = Deploy().function("Environment")["Variables"]
    assert int(variables["CHAT_DEPLOYMENT_TOKENS_PER_DAY"]) > 0
    assert variables["CHAT_BUDGET_TOKENS_PER_DAY"] == variables["CHAT_BUDGET_TOKENS_PER_MONTH"] == ""
    plain = {name: value for name, value in variables.items() if isinstance(value, str)}
    assert Settings.from_env(plain).budget_tokens_per_day is None  # empty = no budget, not an error


# SAM's own translator (in SAM CLI's virtualenv) turns the template into what CloudFormation deploys.
REST_ROUTES = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class Policies:
    def load(self):
        return {"AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}

template = yaml_parse(open("template.yaml").read())
template["Resources"]["ChatFunction"]["Properties"]["CodeUri"] = "s3://bucket/chat.zip"
deployed = transform(template, {"AuthMode": sys.argv[1]}, Policies())
routes = {}
for resource in deployed["Resources"].values():
    if resource["Type"] == "AWS::ApiGateway::RestApi":
        for path, methods in resource["Properties"]["Body"]["paths"].items():
            for method, spec in methods.items():
                integration = spec["x-amazon-apigateway-integration"]
                routes[f"{method.upper()} {path}"] = {
                    "iam": spec.get("security") == [{"AWS_IAM": []}],
                    "credentials": integration.get("credentials"),
                    "streamed": integration.get("responseTransferMode") == "STREAM",
                }
print(json.dumps(routes))
"""


@pytest.mark.parametrize("auth_mode", ["TOKEN", "AWS_IAM"])
def test_the_rest_api_invokes_the_function_itself_and_streams_what_the_runtime_streams(auth_mode: str) -> None:
    """A caller needs only execute-api:Invoke: API Gateway calls the function under its resource policy.
    (SAM's default for AWS_IAM routes passes the caller's credentials on, which lambda:InvokeFunction
    would then have to allow for every caller.)"""
    result = run(
        [sam_tool("python"), "-c", REST_ROUTES, auth_mode], env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    )
    assert result.returncode == 0, result.stderr
    routes = json.loads(result.stdout)
    assert set(routes) == {
        "POST /api/chat/stream",
        "GET /api/conversations",
        "GET /api/conversations/{conversation_id}",
        "DELETE /api/conversations/{conversation_id}",
        "POST /api/conversations/{conversation_id}/stop",
        "GET /api/conversations/{conversation_id}/stream",
        "GET /api/usage",
        "GET /",
        "GET /static/{name}",
    }
    assert all(route["credentials"] is None for route in routes.values())
    public = {"GET /", "GET /static/{name}"}
    assert all(route["iam"] for name, route in routes.items() if name not in public)
    streamed = {name for name, route in routes.items() if route["streamed"]}
    variables = Deploy(AuthMode=auth_mode).function("Environment")["Variables"]
    assert streamed == {route.strip() for route in variables["CHAT_REST_STREAMING_ROUTES"].split(",")}
