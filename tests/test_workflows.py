"""The CI/CD workflows and the deploy role: linted offline, and the properties a reviewer checks.

GitHub and AWS cannot run here; the workflows are checked against GitHub's schema
(vendored in check-jsonschema) and the role template with cfn-lint.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPLOY_ROLE = ROOT / ".github" / "deploy-role.yaml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
OIDC = "aws-actions/configure-aws-credentials"
DEPLOY_WORKFLOW = "./.github/workflows/deploy.yml"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path)
    return data


def jobs() -> dict[tuple[str, str], dict[str, Any]]:
    return {(path.name, name): job for path in WORKFLOWS for name, job in load(path)["jobs"].items()}


def step_uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def run_scripts(job: dict[str, Any]) -> str:
    return "\n".join(step["run"] for step in job.get("steps", []) if "run" in step)


def assumes_the_deploy_role(job: dict[str, Any]) -> bool:
    return job.get("uses") == DEPLOY_WORKFLOW or any(uses.startswith(f"{OIDC}@") for uses in step_uses(job))


def test_workflows_match_githubs_schema() -> None:
    assert WORKFLOWS, "no workflows found"
    result = subprocess.run(
        [ROOT / ".venv/bin/check-jsonschema", "--builtin-schema", "vendor.github-workflows", *WORKFLOWS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deploy_role_template_lints_clean() -> None:
    result = subprocess.run(
        [ROOT / ".venv-sam/bin/cfn-lint", "--", DEPLOY_ROLE], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_one_commit() -> None:
    pins: dict[str, set[str]] = {}
    for (workflow, name), job in jobs().items():
        for uses in step_uses(job) + ([job["uses"]] if "uses" in job else []):
            if uses.startswith("./"):
                continue
            assert PINNED.match(uses), f"{workflow} {name}: {uses} is not pinned to a commit SHA"
            action, sha = uses.split("@")
            pins.setdefault(action, set()).add(sha)
    assert {action: shas for action, shas in pins.items() if len(shas) > 1} == {}


def test_only_jobs_that_assume_the_deploy_role_may_request_an_oidc_token() -> None:
    for path in WORKFLOWS:
        assert "id-token" not in load(path).get("permissions", {}), f"{path.name}: id-token granted workflow-wide"
    for (workflow, name), job in jobs().items():
        wants_token = job.get("permissions", {}).get("id-token") == "write"
        assert wants_token == assumes_the_deploy_role(job), f"{workflow} {name}"


def test_aws_is_only_reached_on_pushes_to_main() -> None:
    ci = load(ROOT / ".github/workflows/ci.yml")
    assert ci["on"]["push"] == {"branches": ["main"]}
    by_name = ci["jobs"]
    for name, job in by_name.items():
        if assumes_the_deploy_role(job):
            chain = [job]
            while "if" not in chain[-1]:
                needs = chain[-1]["needs"]
                chain.append(by_name[needs if isinstance(needs, str) else needs[0]])
            assert chain[-1]["if"] == "github.event_name == 'push'", name


def test_each_environment_deploys_one_at_a_time_and_never_cancels_a_deploy() -> None:
    deploy = load(ROOT / ".github/workflows/deploy.yml")["jobs"]["deploy"]
    assert deploy["environment"]["name"] == "${{ inputs.environment }}"
    assert deploy["concurrency"] == {"group": "deploy-${{ inputs.environment }}", "cancel-in-progress": False}


def test_prod_is_promoted_from_the_default_deploy_with_the_same_artifact() -> None:
    ci = load(ROOT / ".github/workflows/ci.yml")["jobs"]
    assert ci["deploy-default"]["uses"] == DEPLOY_WORKFLOW
    assert ci["deploy-default"]["with"]["environment"] == "default"
    assert ci["deploy-prod"]["uses"] == DEPLOY_WORKFLOW
    assert ci["deploy-prod"]["with"]["environment"] == "prod"
    assert ci["deploy-prod"]["needs"] == "deploy-default"
    deploy = load(ROOT / ".github/workflows/deploy.yml")["jobs"]["deploy"]
    scripts = run_scripts(deploy)
    assert "sam build" not in scripts
    assert "sam package" not in scripts
    assert "--template-file packaged.yaml" in scripts
    assert "python -m tools.smoke" in scripts
    packaged = [step for step in ci["package"]["steps"] if step.get("with", {}).get("name") == "packaged-template"]
    downloaded = [step for step in deploy["steps"] if step.get("with", {}).get("name") == "packaged-template"]
    assert len(packaged) == len(downloaded) == 1
    assert downloaded[0]["with"]["run-id"] == "${{ github.run_id }}", "a re-run (rollback) must find the run's artifact"


def test_deploy_jobs_smoke_the_stacks_samconfig_deploys() -> None:
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for name in ("deploy-default", "deploy-prod"):
        given = load(ROOT / ".github/workflows/ci.yml")["jobs"][name]["with"]
        section = samconfig[given["environment"]]
        parameters = {**section.get("global", {}).get("parameters", {}), **section["deploy"]["parameters"]}
        assert parameters["stack_name"] == given["stack-name"], name


def test_the_deploy_role_trusts_only_this_repositorys_main_branch_and_environments() -> None:
    role = YAML(typ="rt").load(DEPLOY_ROLE)["Resources"]["DeployRole"]["Properties"]
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert list(statement["Condition"]) == ["StringEquals"]
    claims = statement["Condition"]["StringEquals"]
    assert claims["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert [str(subject.value) for subject in claims["token.actions.githubusercontent.com:sub"]] == [
        "repo:${GitHubOwner}/${GitHubRepo}:ref:refs/heads/main",
        "repo:${GitHubOwner}/${GitHubRepo}:environment:default",
        "repo:${GitHubOwner}/${GitHubRepo}:environment:prod",
    ]


@pytest.mark.parametrize("action", ["*", "iam:*", "lambda:*", "s3:*", "cloudformation:*", "secretsmanager:*"])
def test_the_deploy_role_grants_no_service_wide_wildcard(action: str) -> None:
    role = YAML(typ="rt").load(DEPLOY_ROLE)["Resources"]["DeployRole"]["Properties"]
    for statement in role["Policies"][0]["PolicyDocument"]["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert action not in actions, statement["Sid"]
