"""infra/README.md's deployment path against moto (conftest.py's ``deployment``), checked.

The bootstrap applied the committed production.tfvars; the deploy workflow's own plan and apply
commands then deployed two releases. Each test names the fault of issue 13 it guards against.
Where moto cannot run something (autoscaling, a real endpoint), the plan is checked instead;
infra/README.md ("What only a real account shows") lists what neither can prove.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.infra.conftest import (
    ARTIFACT,
    ARTIFACT2,
    INFRA,
    SHA,
    SHA2,
    actions,
    as_list,
    grants,
    ok,
    planned,
    run,
    workflow_command,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# AWS, "Give SageMaker AI Hosted Endpoints Access to Resources in Your Amazon VPC", section "Add
# Permissions for Endpoint Access for Containers Running in a VPC to Custom IAM Policies"
# (docs.aws.amazon.com/sagemaker/latest/dg/host-vpc.html#host-vpc-endpoints): these ten actions
# on Resource "*", nothing more.
AWS_VPC_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface",
    "ec2:DeleteNetworkInterfacePermission",
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcEndpoints",
    "ec2:DescribeVpcs",
}
GITHUB_RESOURCES = (
    "aws_iam_openid_connect_provider.github[0]",
    "aws_iam_role.github_push[0]",
    "aws_iam_role_policy.github_push[0]",
    "aws_iam_role.github_plan[0]",
    "aws_iam_role_policy.github_plan[0]",
)


@pytest.fixture(scope="module")
def out(deployment) -> dict:
    return deployment.outputs["second"]


# --- CI plans with everything the bootstrap applied -----------------------------------------


def test_ci_plan_keeps_every_bootstrap_variable_and_resource(deployment):
    bootstrap, deploy = deployment.plans["bootstrap"], deployment.plans["deploy"]
    changed = {
        name for name, value in bootstrap["variables"].items() if deploy["variables"][name] != value
    }
    assert changed == {"image_tag", "model_artifact"}, changed
    assert deploy["variables"]["github_repository"]["value"] == "acme/sdturbo"
    assert deploy["variables"]["tf_state_bucket"]["value"] == "acme-tfstate"
    planned_actions = actions(deploy)
    for address in GITHUB_RESOURCES:
        assert planned_actions[address] == ["no-op"], address
    # ECR replaces a lifecycle policy to change it (it now protects the deployed tag).
    destroyed = {a for a, act in planned_actions.items() if "delete" in act}
    assert destroyed <= {"aws_ecr_lifecycle_policy.this"}, destroyed


def test_the_old_ci_plan_command_would_have_destroyed_the_github_roles(deployment):
    # The seed's workflow planned with only image_tag and region: github_repository was null
    # there, so the plan deleted what the bootstrap had created with it.
    result = deployment.terraform(
        "plan", "-refresh=false", "-out=old-ci.plan", f"-var=image_tag={SHA2}",
        "-var=region=us-east-1", f"-var=model_artifact={ARTIFACT2}",
    )  # fmt: skip
    assert result
    planned_actions = actions(deployment.plan_json("old-ci.plan"))
    for address in GITHUB_RESOURCES:
        assert planned_actions[address] == ["delete"], address


def test_the_workflow_and_the_readme_plan_with_the_committed_tfvars():
    plan = workflow_command("plan", "terraform plan")
    assert "-var-file=production.tfvars" in plan and "-var-file=live.tfvars.json" in plan
    assert re.findall(r"-var[ =]\"?(\w+)=", plan) == ["image_tag"], plan
    readme = (INFRA / "README.md").read_text()
    commands = re.findall(r"^\s*terraform (?:plan|apply)\b.*$", readme, re.MULTILINE)
    assert commands, "infra/README.md shows no terraform plan/apply"
    for command in commands:
        if "tfplan" in command.split():
            continue  # applies a saved plan
        assert "-var-file=production.tfvars" in command, command
        assert set(re.findall(r"-var[ =]\"?(\w+)=", command)) <= {"image_tag"}, command
    settings = dict(
        re.findall(r"^(\w+)\s*=\s*(.+)$", (INFRA / "production.tfvars").read_text(), re.MULTILINE)
    )
    for name in ("region", "github_repository", "create_github_oidc_provider",
                 "tf_state_bucket", "tf_state_key", "instance_type", "inference_ami_version",
                 "model_artifact", "container_environment"):  # fmt: skip
        assert name in settings, f"production.tfvars does not set {name}"


def test_the_plan_role_can_hold_the_state_lock_and_nothing_else(deployment, out):
    arn = out["github_plan_role_arn"]
    statements = deployment.role_policy(arn, "terraform-plan")
    allowed = grants([s for s in statements if s["Effect"] == "Allow"])
    state = "arn:aws:s3:::acme-tfstate/sdturbo/terraform.tfstate"
    assert allowed["s3:PutObject"] == allowed["s3:DeleteObject"] == {state + ".tflock"}
    assert state in allowed["s3:GetObject"]
    writes = {a for a in allowed if re.match(r"s3:(Put|Delete)", a)}
    assert writes == {"s3:PutObject", "s3:DeleteObject"}
    iam = deployment.client("iam")
    role = iam.get_role(RoleName=arn.split("/")[-1])["Role"]
    attached = iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
    assert attached == []  # no ReadOnlyAccess (account-wide s3:GetObject)


def test_the_plan_role_reads_no_object_but_the_state(deployment, out):
    statements = deployment.role_policy(out["github_plan_role_arn"], "terraform-plan")
    allowed = grants([s for s in statements if s["Effect"] == "Allow"])
    state = "arn:aws:s3:::acme-tfstate/sdturbo/terraform.tfstate"
    object_reads = {a for a in allowed if re.fullmatch(r"s3:(Get\*?|GetObject\w*|\*)", a)}
    assert object_reads == {"s3:GetObject"} and allowed["s3:GetObject"] == {
        state,
        state + ".tflock",
    }
    for action, resources in allowed.items():
        if action.startswith("s3:") and action not in {
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
        }:
            assert all("/" not in r for r in resources), action  # buckets (settings), no object
        assert not action.endswith(":*") and action != "*", action
    # Only Describe/Get/List, besides the lock object.
    assert all(
        re.match(r"[\w-]+:(Describe|Get|List)", a) for a in allowed if a not in writes_of(allowed)
    )


def writes_of(allowed: dict) -> set[str]:
    return {a for a in allowed if re.match(r"s3:(Put|Delete)", a)}


def test_push_and_plan_roles_trust_distinct_environments(deployment, out):
    iam = deployment.client("iam")
    subjects = {}
    for role in ("push", "plan"):
        name = out[f"github_{role}_role_arn"].split("/")[-1]
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]["Statement"][0]
        subjects[role] = as_list(
            trust["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]
        )
    assert subjects == {
        "push": ["repo:acme/sdturbo:environment:ecr-push"],
        "plan": ["repo:acme/sdturbo:environment:terraform-plan"],
    }
    workflows = INFRA.parent / ".github" / "workflows"
    assert "environment: ecr-push" in (workflows / "build-and-push.yml").read_text()
    deploy = (workflows / "deploy-infrastructure.yml").read_text()
    plan_job = deploy[deploy.index("\n  plan:") : deploy.index("\n  apply:")]
    assert "environment: terraform-plan" in plan_job


# --- models roll out: versioned artifacts, a model name per content, blue/green -------------


def changes(plan: dict) -> dict[str, list[str]]:
    return {a: act for a, act in actions(plan).items() if act not in (["no-op"], ["read"])}


def config_of(deployment, release: str, kind: str) -> str:
    return deployment.endpoint_configs[release][kind]["EndpointConfigName"]


def test_a_release_rolls_out_blue_green_beside_the_live_release(deployment, out):
    # "second" came after "rolled-back": live were the sync config of "deploy" (the rollback
    # left it there) and the async config of "rolled-back".
    planned_actions = changes(deployment.plans["second"])
    assert planned_actions.pop("aws_ecr_lifecycle_policy.this") == ["delete", "create"]
    assert planned_actions.pop('aws_sagemaker_endpoint.this["sync"]') == ["update"]
    assert planned_actions.pop('aws_sagemaker_endpoint.this["async"]') == ["update"]
    created = {a for a, act in planned_actions.items() if act == ["create"]}
    deleted = {a for a, act in planned_actions.items() if act == ["delete"]}
    assert planned_actions == {a: ["create"] for a in created} | {a: ["delete"] for a in deleted}
    assert len(created) == len(deleted) == 4  # model + config, per endpoint
    sm = deployment.client("sagemaker")
    for kind in ("sync", "async"):
        endpoint = sm.describe_endpoint(EndpointName=out[f"{kind}_endpoint_name"])
        assert endpoint["EndpointConfigName"] == config_of(deployment, "second", kind)
        model = deployment.endpoint_configs["second"][kind]["ProductionVariants"][0]["ModelName"]
        assert model == out["model_names"][kind]
        assert re.fullmatch(rf"sdturbo-{kind}-{SHA2[:8]}-[0-9a-f]{{10}}", model)
    # Kept: what each endpoint served when "second" was planned. Gone: the rest.
    kept = {config_of(deployment, "deploy", "sync"), config_of(deployment, "rolled-back", "async")}
    never_served = {  # the sync config of the release that rolled back
        re.search(r'\["(.+)"\]', a)[1]
        for a, act in actions(deployment.plans["rolled-back"]).items()
        if a.startswith("aws_sagemaker_endpoint_configuration.") and act == ["create"]
    } - kept
    gone = never_served | {config_of(deployment, "deploy", "async")}
    names = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    current = {config_of(deployment, "second", k) for k in ("sync", "async")}
    assert len(gone) == 2 and names == current | kept and not names & gone
    assert out["release"]["sync"]["kept_configs"] == [config_of(deployment, "deploy", "sync")]
    image = sm.describe_model(ModelName=out["model_names"]["sync"])["PrimaryContainer"]["Image"]
    assert image == f"{out['ecr_repository_url']}:{SHA2}"


def test_a_rolled_back_release_fails_and_deletes_nothing_in_use(deployment):
    """SageMaker rolled the sync update back (its queue-wait alarm fired in the bake). The
    provider still reported success (the shim, like AWS, ends InService on the old config):
    the workflow's verify step fails, loudly, and the config and model in use still exist."""
    verified = deployment.verified["rolled-back"]
    assert verified.returncode == 1, verified.stdout + verified.stderr
    message = " ".join(verified.stderr.split())
    old = config_of(deployment, "deploy", "sync")
    assert (
        "RELEASE NOT LIVE" in message
        and f"sdturbo-sync is InService on endpoint config {old}" in message
    )
    assert "kept by this apply" in message and "sdturbo-async" not in message.split("Next:")[0]
    snapshot = deployment.endpoint_configs["rolled-back"]
    assert snapshot["sync"]["EndpointConfigName"] == old  # what serves: the previous release
    assert snapshot["async"]["EndpointConfigName"] != config_of(deployment, "deploy", "async")
    plan = changes(deployment.plans["rolled-back"])
    assert not [a for a, act in plan.items() if "delete" in act and "sagemaker" in a], plan
    assert deployment.live["rolled-back"]["live_releases"]["sync"]["image_tag"] == SHA
    # ...and the next release succeeded over it (test above), verified.
    assert deployment.verified["second"].returncode == 0, deployment.verified["second"].stderr
    assert deployment.verified["deploy"].returncode == 0, deployment.verified["deploy"].stderr


def test_instance_counts_survive_a_release(deployment):
    # Before "rolled-back", autoscaling had sync at 3 and async at 0.
    live = deployment.live["rolled-back"]["live_releases"]
    assert (live["sync"]["instance_count"], live["async"]["instance_count"]) == (3, 0)
    configs = deployment.endpoint_configs
    for release in ("rolled-back", "second"):
        # The async fleet starts with 1 for the bake: InitialInstanceCount has a minimum of 1.
        assert configs[release]["async"]["ProductionVariants"][0]["InitialInstanceCount"] == 1
    assert configs["second"]["sync"]["ProductionVariants"][0]["InitialInstanceCount"] == 3
    # verify returned the async endpoint to 0 once the release was live.
    assert deployment.counts_after["second"] == {"sync": 3, "async": 0}
    assert deployment.counts_after["deploy"] == {"sync": 1, "async": 1}  # was not at 0 before


def test_the_bake_sends_async_requests_while_the_endpoint_updates(deployment, out):
    from optimize.release import bake_traffic

    statuses = iter(["InService", "Updating", "Updating", "Updating", "InService"])

    class UpdatingEndpoint:  # the update itself is instantaneous in moto
        def describe_endpoint(self, EndpointName):
            return {"EndpointStatus": next(statuses)}

    sent = bake_traffic(
        UpdatingEndpoint(), deployment.client("sagemaker-runtime"), deployment.client("s3"),
        out["async_endpoint_name"], out["bucket"], interval_s=0, log=lambda _: None,
    )  # fmt: skip
    assert len(sent) == 3
    s3 = deployment.client("s3")
    for inference_id in sent:  # under inputs/direct/: the trigger does not invoke them again
        body = s3.get_object(Bucket=out["bucket"], Key=f"inputs/direct/{inference_id}.json")["Body"]
        assert json.loads(body.read())["num_inference_steps"] == 1
    workflow = (INFRA.parent / ".github" / "workflows" / "deploy-infrastructure.yml").read_text()
    apply_job = workflow[workflow.index("\n  apply:") :]
    bake = apply_job.index("optimize.release bake")
    assert (
        bake
        < apply_job.index("terraform apply tfplan")
        < apply_job.index("optimize.release verify")
    )


def test_session_lengths_cover_the_longest_wait():
    import yaml

    workflow = yaml.safe_load(
        (INFRA.parent / ".github/workflows/deploy-infrastructure.yml").read_text()
    )
    apply_job = workflow["jobs"]["apply"]
    credentials = next(
        s for s in apply_job["steps"] if "configure-aws-credentials" in s.get("uses", "")
    )
    role_s = int(credentials["with"]["role-duration-seconds"])
    job_s = apply_job["timeout-minutes"] * 60
    variables = (INFRA / "variables.tf").read_text()
    block = re.search(r'variable "deployment_timeout_s" \{(.*?)\n\}', variables, re.S)[1]
    default = int(re.search(r"default\s*=\s*(\d+)", block)[1])
    maximum = int(re.search(r"var.deployment_timeout_s <= (\d+)", block)[1])
    provider_wait_s = 3600  # the provider's fixed wait for InService (5.100.0)
    assert default <= maximum < provider_wait_s  # SageMaker gives up before Terraform does
    assert job_s >= provider_wait_s + 600  # the wait, plus the rest of the apply
    assert role_s > job_s  # credentials outlast the job: no expiry mid-apply, no stale lock
    readme = (INFRA / "README.md").read_text()
    max_session = int(re.search(r"--max-session-duration (\d+)", readme)[1])
    assert max_session >= role_s


def test_a_too_long_deployment_timeout_is_refused(refused_plan):
    refused = refused_plan(f"-var=image_tag={SHA2}", "-var=deployment_timeout_s=5400")
    assert "provider stops waiting for InService after 60 minutes" in refused


def test_every_update_is_guarded_by_rollback_alarms(deployment, out):
    sm = deployment.client("sagemaker")
    alarms = {
        a["AlarmName"]: a for a in deployment.client("cloudwatch").describe_alarms()["MetricAlarms"]
    }
    for kind in ("sync", "async"):
        name = out[f"{kind}_endpoint_name"]
        config = sm.describe_endpoint(EndpointName=name)["LastDeploymentConfig"]
        policy = config["BlueGreenUpdatePolicy"]
        assert policy["TrafficRoutingConfiguration"] == {
            "Type": "ALL_AT_ONCE",
            "WaitIntervalInSeconds": 600,  # the baking period, watched by the alarms
        }
        assert policy["MaximumExecutionTimeoutInSeconds"] == 3300  # < the provider's 60 min
        rollback = {a["AlarmName"] for a in config["AutoRollbackConfiguration"]["Alarms"]}
        assert rollback == {f"{name}-5xx-errors", f"{name}-model-latency", f"{name}-queue-wait"}
        metrics = {(alarms[a]["Namespace"], alarms[a]["MetricName"]) for a in rollback}
        assert metrics == {("AWS/SageMaker", "Invocation5XXErrors"),
                           ("AWS/SageMaker", "ModelLatency"), ("SDTurbo", "QueueWait")}  # fmt: skip
        for alarm in rollback:
            dimensions = {d["Name"]: d["Value"] for d in alarms[alarm]["Dimensions"]}
            assert dimensions == {"EndpointName": name, "VariantName": "AllTraffic"}
    # The execution role may read exactly those alarms (AWS: "Auto-Rollback Configuration").
    allowed = grants(deployment.role_policy(out["execution_role_arn"], "least-privilege"))
    expected = {
        f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{out[f'{k}_endpoint_name']}-{m}"
        for k in ("sync", "async")
        for m in ("5xx-errors", "model-latency", "queue-wait")
    }
    assert allowed["cloudwatch:DescribeAlarms"] == expected


def test_alarms_watch_errors_latency_and_the_async_queue(deployment, out):
    alarms = deployment.client("cloudwatch").describe_alarms()["MetricAlarms"]
    watched = {
        (a["MetricName"], {d["Name"]: d["Value"] for d in a["Dimensions"]}["EndpointName"])
        for a in alarms
        if a["Namespace"] == "AWS/SageMaker"
    }
    sync, async_ = out["sync_endpoint_name"], out["async_endpoint_name"]
    assert watched >= {
        ("Invocation5XXErrors", sync),
        ("Invocation5XXErrors", async_),
        ("ModelLatency", sync),
        ("ModelLatency", async_),
        ("ApproximateAgeOfOldestRequest", async_),
    }
    for alarm in alarms:
        if alarm["MetricName"] != "HasBacklogWithoutCapacity":  # that one wakes the endpoint
            assert alarm["AlarmActions"] == [out["alarm_topic_arn"]], alarm["AlarmName"]


def test_the_model_name_follows_image_artifact_and_environment(deployment, out):
    image = f"-var=image_tag={SHA2}"
    still = deployment.plan_changes(image)
    assert still == {}, f"a second plan of the same release is not empty: {still}"
    # Once "second" is verified it is the live release: the next plan (the workflow reads the
    # live releases first) removes the release kept for it, and nothing else.
    env = {
        **deployment.env,
        "PYTHONPATH": str(INFRA.parent),
        "AWS_ENDPOINT_URL": deployment.moto.url,
    }
    ok(run(workflow_command("plan", "Read what the endpoints serve now"), deployment.stack, env))
    cleanup = deployment.plan_changes(image)
    kept = set(out["release"]["sync"]["kept_configs"] + out["release"]["async"]["kept_configs"])
    assert {re.search(r'\["(.+)"\]', a)[1] for a in cleanup if "configuration" in a} == kept
    assert set(map(tuple, cleanup.values())) == {("delete",)}
    names = {}
    for change, args in {
        "image": ("-refresh=false", f"-var=image_tag={SHA}"),
        "artifact": ("-refresh=false", image, f"-var=model_artifact={ARTIFACT}"),
        "environment": (
            "-refresh=false", image, '-var=container_environment={SDTURBO_MAX_BATCH_SIZE="4"}',
        ),
    }.items():  # fmt: skip
        planned_actions = deployment.plan_changes(*args)
        new_models = [a for a, act in planned_actions.items()
                      if a.startswith("aws_sagemaker_model.") and act == ["create"]]  # fmt: skip
        assert len(new_models) == 2, (change, planned_actions)  # one per endpoint
        names[change] = re.search(r'\["(.+)"\]', sorted(new_models)[0])[1]
        for kind in ("sync", "async"):
            assert planned_actions[f'aws_sagemaker_endpoint.this["{kind}"]'] == ["update"], change
        # The live release stays: a release deletes only what no endpoint serves.
        deleted = {a for a, act in planned_actions.items() if "delete" in act and "sagemaker" in a}
        assert deleted <= set(cleanup), (change, deleted - set(cleanup))
    assert len({out["model_names"]["async"], *names.values()}) == 4, names
    assert all(re.fullmatch(r"sdturbo-async-[0-9a-f]{8}-[0-9a-f]{10}", n) for n in names.values())


def test_the_container_knows_its_endpoint_variant_and_metrics_namespace(
    deployment, out, refused_plan
):
    sm = deployment.client("sagemaker")
    for kind in ("sync", "async"):
        environment = sm.describe_model(ModelName=out["model_names"][kind])["PrimaryContainer"][
            "Environment"
        ]
        assert environment == {
            "SDTURBO_ENDPOINT_NAME": out[f"{kind}_endpoint_name"],
            "SDTURBO_VARIANT_NAME": "AllTraffic",
            "SDTURBO_METRICS_NAMESPACE": "SDTurbo",
        }
    refused = refused_plan(
        f"-var=image_tag={SHA2}", '-var=container_environment={SDTURBO_ENDPOINT_NAME="x"}'
    )
    assert "Terraform sets them" in refused


def test_no_interface_endpoint_without_a_caller_in_the_vpc(deployment, out):
    described = deployment.client("ec2").describe_vpc_endpoints(
        Filters=[{"Name": "vpc-id", "Values": [out["vpc_id"]]}]
    )["VpcEndpoints"]
    # The container is network-isolated and clients call from outside: no sagemaker.runtime.
    assert {e["ServiceName"] for e in described} == {
        f"com.amazonaws.us-east-1.{s}" for s in ("s3", "ecr.api", "ecr.dkr", "logs")
    }


def test_artifacts_live_under_versioned_immutable_prefixes(deployment, out, refused_plan):
    bucket = out["bucket"]
    sm = deployment.client("sagemaker")
    model = out["model_names"]["sync"]
    source = sm.describe_model(ModelName=model)["PrimaryContainer"]["ModelDataSource"]
    assert source["S3DataSource"] == {
        "S3Uri": f"s3://{bucket}/{ARTIFACT2}",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    policy = json.loads(deployment.client("s3").get_bucket_policy(Bucket=bucket)["Policy"])
    statements = {s.get("Sid"): s for s in policy["Statement"]}
    writes = statements["OnlyTheBuildJobWritesArtifacts"]
    assert writes["Effect"] == "Deny" and as_list(writes["Action"]) == ["s3:PutObject"]
    assert as_list(writes["Resource"]) == [f"arn:aws:s3:::{bucket}/models/*"]
    assert as_list(writes["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == [
        out["build_role_arn"]
    ]
    deletes = statements["ArtifactsAreNeverDeleted"]
    assert deletes["Effect"] == "Deny"
    assert set(as_list(deletes["Action"])) == {"s3:DeleteObject", "s3:DeleteObjectVersion"}
    assert "Condition" not in deletes
    # The endpoints read every version (a rollback needs the previous one) and write none.
    allowed = grants(deployment.role_policy(out["execution_role_arn"], "least-privilege"))
    assert f"arn:aws:s3:::{bucket}/models/*" in allowed["s3:GetObject"]
    assert not any("models/" in r for r in allowed.get("s3:PutObject", ()))
    # The seed's fixed, overwritable prefix is refused.
    refused = refused_plan(f"-var=image_tag={SHA2}", "-var=model_artifact=model/")
    assert "model_artifact must be models/<version>/" in refused


def test_both_variants_run_a_cuda_12_inference_ami(deployment, refused_plan):
    for kind in ("sync", "async"):
        variant = deployment.endpoint_configs["second"][kind]["ProductionVariants"][0]
        assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1", kind
    refused = refused_plan(
        f"-var=image_tag={SHA2}", "-var=inference_ami_version=al2-ami-sagemaker-inference-gpu-9"
    )
    assert "inference_ami_version must be a GPU inference AMI" in refused


# --- ECR never expires what a model pulls ---------------------------------------------------


def expire(policy: dict, pushed: list[dict]) -> set[str]:
    """ECR's lifecycle evaluation (ECR user guide, "Lifecycle policy properties" and "How
    lifecycle policies work"): rules by ascending rulePriority; a rule selects images by tag
    status (a tagPatternList selects images carrying a tag for every pattern); countType
    imageCountMoreThan keeps the newest countNumber of its selection and expires the rest; an
    image selected by a rule cannot be expired by a rule of lower priority."""
    claimed: set[str] = set()
    expired: set[str] = set()
    for rule in sorted(policy["rules"], key=lambda r: r["rulePriority"]):
        selection = rule["selection"]
        assert selection["countType"] == "imageCountMoreThan"
        chosen = []
        for image in pushed:  # newest first
            if image["digest"] in claimed or image["digest"] in expired:
                continue
            if selection["tagStatus"] == "tagged":
                patterns = selection.get("tagPatternList") or []
                prefixes = selection.get("tagPrefixList") or []
                if not all(
                    any(re.fullmatch(p.replace("*", ".*"), t) for t in image["tags"])
                    for p in patterns
                ) or not all(any(t.startswith(p) for t in image["tags"]) for p in prefixes):
                    continue
            elif selection["tagStatus"] == "untagged" and image["tags"]:
                continue
            chosen.append(image["digest"])
        claimed.update(chosen)
        expired.update(chosen[selection["countNumber"] :])
    return expired


def test_ecr_lifecycle_never_expires_the_deployed_image(deployment, out):
    ecr = deployment.client("ecr")
    policy = json.loads(ecr.get_lifecycle_policy(repositoryName="sdturbo")["lifecyclePolicyText"])
    assert policy["rules"][-1]["selection"]["tagStatus"] == "any"  # "any" must come last
    # The deployed image is the oldest of 40 pushes: "keep the 30 newest" alone expires it.
    others = [f"{i:040x}" for i in range(1, 40)]
    pushed = [{"digest": f"sha256:{t}", "tags": [t]} for t in reversed(others)]
    pushed.append({"digest": "sha256:deployed", "tags": [SHA2]})
    expired = expire(policy, pushed)
    assert "sha256:deployed" not in expired
    assert len(pushed) - len(expired) == 31  # the deployed one plus the 30 newest others
    seed_policy = {"rules": [{"rulePriority": 1, "action": {"type": "expire"},
                              "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                                            "countNumber": 30}}]}  # fmt: skip
    assert "sha256:deployed" in expire(seed_policy, pushed)  # the fault this guards against


# --- least privilege, checked against what AWS documents ------------------------------------


def test_execution_role_vpc_actions_are_exactly_awss_documented_list(deployment, out):
    statements = deployment.role_policy(out["execution_role_arn"], "least-privilege")
    ec2 = [s for s in statements if any(a.startswith("ec2:") for a in as_list(s["Action"]))]
    assert {a for s in ec2 for a in as_list(s["Action"])} == AWS_VPC_ACTIONS
    for statement in ec2:  # as documented: on "*", unconditioned (ENIs have no ARN beforehand)
        assert as_list(statement["Resource"]) == ["*"] and "Condition" not in statement
    model = deployment.client("sagemaker").describe_model(ModelName=out["model_names"]["sync"])
    assert model["ExecutionRoleArn"] == out["execution_role_arn"]
    assert len(model["VpcConfig"]["Subnets"]) == 2


def test_execution_role_grants_nothing_else_on_every_resource(deployment, out):
    statements = deployment.role_policy(out["execution_role_arn"], "least-privilege")
    unscoped = {
        a
        for s in statements
        if "*" in as_list(s["Resource"])
        for a in as_list(s["Action"])
        if not a.startswith("ec2:")
    }
    assert unscoped == {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
    allowed = grants(statements)
    bucket = f"arn:aws:s3:::{out['bucket']}"
    assert allowed["s3:PutObject"] == {f"{bucket}/outputs/*", f"{bucket}/failures/*"}
    assert allowed["s3:GetObject"] == {f"{bucket}/models/*", f"{bucket}/inputs/*"}
    assert not any(a.startswith(("iam:", "sagemaker:", "s3:Delete")) for a in allowed)


# --- async inference without the CLI: S3 upload -> EventBridge -> Step Functions ------------


def test_the_trigger_is_wired_with_least_privilege(deployment, out):
    bucket, machine = out["bucket"], out["trigger_state_machine_arn"]
    s3, events = deployment.client("s3"), deployment.client("events")
    assert "EventBridgeConfiguration" in s3.get_bucket_notification_configuration(Bucket=bucket)
    rule = events.describe_rule(Name="sdturbo-async-inputs")
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": "inputs/"}]}},
    }
    (target,) = events.list_targets_by_rule(Rule="sdturbo-async-inputs")["Targets"]
    assert target["Arn"] == machine
    assert grants(deployment.role_policy(target["RoleArn"], "start-execution")) == {
        "states:StartExecution": {machine}
    }
    described = deployment.client("stepfunctions").describe_state_machine(stateMachineArn=machine)
    statements = deployment.role_policy(described["roleArn"], "least-privilege")
    assert grants(statements) == {
        "sagemaker:InvokeEndpointAsync": {
            f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{out['async_endpoint_name']}"
        },
        "s3:PutObjectTagging": {f"arn:aws:s3:::{bucket}/inputs/*"},
        "s3:PutObject": {f"arn:aws:s3:::{bucket}/failures/*-trigger-error.json"},
        "kms:GenerateDataKey": {out["kms_key_arn"]},
    }
    definition = json.loads(described["definition"])
    invoke = definition["States"]["Invoke"]
    assert invoke["Resource"] == "arn:aws:states:::aws-sdk:sagemakerruntime:invokeEndpointAsync"
    assert invoke["Parameters"]["EndpointName"] == out["async_endpoint_name"]
    assert invoke["Parameters"]["InferenceId.$"] == "$.name"  # names the result after the input


def executions_for(deployment, machine: str, key: str, timeout: float = 30) -> list[dict]:
    sfn = deployment.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for summary in sfn.list_executions(stateMachineArn=machine)["executions"]:
            described = sfn.describe_execution(executionArn=summary["executionArn"])
            if json.loads(described["input"])["detail"]["object"]["key"] == key:
                found.append(described)
        if found and all(e["status"] != "RUNNING" for e in found):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_an_upload_under_inputs_starts_an_async_inference(deployment, out):
    bucket, machine = out["bucket"], out["trigger_state_machine_arn"]
    s3 = deployment.client("s3")
    request = json.dumps({"prompt": "a photo of a red fox in snow", "seed": 1}).encode()
    s3.put_object(Bucket=bucket, Key="inputs/team/fox.json", Body=request)
    (execution,) = executions_for(deployment, machine, "inputs/team/fox.json")
    assert execution["status"] == "SUCCEEDED", execution
    invoked = json.loads(execution["output"])["invoked"]
    assert invoked["InferenceId"] == "fox.json"  # the request's own name
    tags = {
        t["Key"]: t["Value"]
        for t in s3.get_object_tagging(Bucket=bucket, Key="inputs/team/fox.json")["TagSet"]
    }
    assert tags == {
        "inference-id": "fox.json",
        "output-location": invoked["OutputLocation"],
        "failure-location": invoked["FailureLocation"],
    }


def test_uploads_by_the_cli_and_outside_inputs_are_not_invoked_twice(deployment, out):
    bucket, machine = out["bucket"], out["trigger_state_machine_arn"]
    s3 = deployment.client("s3")
    s3.put_object(Bucket=bucket, Key="inputs/direct/cli.json", Body=b'{"prompt": "x"}')
    s3.put_object(Bucket=bucket, Key="outputs/not-a-request.json", Body=b"{}")
    (execution,) = executions_for(deployment, machine, "inputs/direct/cli.json")
    assert execution["status"] == "SUCCEEDED"
    assert "invoked" not in json.loads(execution["output"])  # the CLI invokes it itself
    assert s3.get_object_tagging(Bucket=bucket, Key="inputs/direct/cli.json")["TagSet"] == []
    assert executions_for(deployment, machine, "outputs/not-a-request.json", timeout=2) == []


# --- what the seed's emulator test checked, kept ---------------------------------------------


def test_async_endpoint_config_and_the_bucket(deployment, out):
    bucket = out["bucket"]
    config = deployment.endpoint_configs["second"]["async"]
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == f"s3://{bucket}/outputs/"
    assert output["S3FailurePath"] == f"s3://{bucket}/failures/"
    assert output["NotificationConfig"] == {
        "SuccessTopic": out["success_topic_arn"],
        "ErrorTopic": out["error_topic_arn"],
    }
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {
        "MaxConcurrentInvocationsPerInstance": 8
    }
    variant = config["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 900
    assert variant["InstanceType"] == "ml.g4dn.xlarge"
    sync = deployment.endpoint_configs["second"]["sync"]
    assert "AsyncInferenceConfig" not in sync
    assert sync["ProductionVariants"][0]["InitialInstanceCount"] >= 1

    s3, ecr = deployment.client("s3"), deployment.client("ecr")
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    sse = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert sse["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        for s in policy["Statement"]
        if "Condition" in s and "Bool" in s["Condition"]
    )
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r["Filter"].get("Prefix") == "outputs/" and "Expiration" in r for r in rules)
    repo = ecr.describe_repositories(repositoryNames=["sdturbo"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}


def test_a_mutable_image_tag_is_refused(refused_plan):
    assert "commit SHA" in refused_plan("-var=image_tag=latest")


def test_autoscaling_wakes_from_zero_and_a_tarball_artifact_plans(deployment, out):
    """moto's application-autoscaling lacks ListTagsForResource, which the provider calls after
    creating a scalable target, so the emulator stack runs without autoscaling: the full stack
    is planned here, and the planned target, step policy and alarm are registered with boto3."""
    tarball = f"models/20250202T000000Z-{SHA2[:12]}/model.tar.gz"
    plan = deployment.plan(
        "-refresh=false", f"-var=image_tag={SHA2}", "-var=create_autoscaling=true",
        f"-var=model_artifact={tarball}",
    )  # fmt: skip
    created = [
        c
        for c in plan["resource_changes"]
        if c["type"] == "aws_sagemaker_model" and c["change"]["actions"] == ["create"]
    ]
    container = created[0]["change"]["after"]["primary_container"][0]
    assert container["model_data_url"] == f"s3://{out['bucket']}/{tarball}"
    assert not container.get("model_data_source")
    endpoint = out["async_endpoint_name"]
    target = planned(plan, "aws_appautoscaling_target.async[0]")
    assert target["min_capacity"] == 0 and target["max_capacity"] >= 1
    assert target["resource_id"] == f"endpoint/{endpoint}/variant/AllTraffic"
    tracking = planned(plan, "aws_appautoscaling_policy.async_backlog[0]")
    metric = tracking["target_tracking_scaling_policy_configuration"][0]
    assert metric["customized_metric_specification"][0]["metric_name"] == (
        "ApproximateBacklogSizePerInstance"
    )
    step = planned(plan, "aws_appautoscaling_policy.async_wake[0]")
    assert step["policy_type"] == "StepScaling"
    config = step["step_scaling_policy_configuration"][0]
    adjustment = config["step_adjustment"][0]
    assert adjustment["scaling_adjustment"] >= 1
    assert adjustment["metric_interval_lower_bound"] == "0"
    alarm = planned(plan, "aws_cloudwatch_metric_alarm.async_wake[0]")
    assert alarm["metric_name"] == "HasBacklogWithoutCapacity"
    assert alarm["dimensions"] == {"EndpointName": endpoint}
    alarm_config = next(
        r
        for r in plan["configuration"]["root_module"]["resources"]
        if r["address"] == "aws_cloudwatch_metric_alarm.async_wake"
    )
    references = alarm_config["expressions"]["alarm_actions"]["references"]
    assert "aws_appautoscaling_policy.async_wake[0].arn" in references

    aas, cloudwatch = deployment.client("application-autoscaling"), deployment.client("cloudwatch")
    key = {
        "ServiceNamespace": target["service_namespace"],
        "ResourceId": target["resource_id"],
        "ScalableDimension": target["scalable_dimension"],
    }
    aas.register_scalable_target(
        **key, MinCapacity=target["min_capacity"], MaxCapacity=target["max_capacity"]
    )
    policy_arn = aas.put_scaling_policy(
        PolicyName=step["name"],
        PolicyType="StepScaling",
        **key,
        StepScalingPolicyConfiguration={
            "AdjustmentType": config["adjustment_type"],
            "MetricAggregationType": config["metric_aggregation_type"],
            "Cooldown": config["cooldown"],
            "StepAdjustments": [
                {
                    "MetricIntervalLowerBound": float(a["metric_interval_lower_bound"]),
                    "ScalingAdjustment": a["scaling_adjustment"],
                }
                for a in config["step_adjustment"]
            ],
        },
    )["PolicyARN"]
    cloudwatch.put_metric_alarm(
        AlarmName=alarm["alarm_name"],
        Namespace=alarm["namespace"],
        MetricName=alarm["metric_name"],
        Statistic=alarm["statistic"],
        Period=alarm["period"],
        EvaluationPeriods=alarm["evaluation_periods"],
        Threshold=alarm["threshold"],
        ComparisonOperator=alarm["comparison_operator"],
        AlarmActions=[policy_arn],
        Dimensions=[{"Name": k, "Value": v} for k, v in alarm["dimensions"].items()],
    )
    registered = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[key["ResourceId"]]
    )["ScalableTargets"]
    assert [t["MinCapacity"] for t in registered] == [0]
    alarms = cloudwatch.describe_alarms(AlarmNames=[alarm["alarm_name"]])["MetricAlarms"]
    assert alarms[0]["AlarmActions"] == [policy_arn]


# --- dashboards: SageMaker's metrics beside the server's own (issue 19) ----------------------

# What the serving code emits as EMF (namespace metrics_namespace, dimensions EndpointName and
# VariantName): the list agreed with the serving side.
SERVER_METRICS = {
    "QueueWait", "BatchSize", "BatchFill", "TextEncoderTime", "UNetTime", "VaeDecodeTime",
    "EncodeTime", "RequestsShed", "Requests", "PromptCacheHits", "PromptCacheMisses",
    "CompileFallbacks", "CompileCacheMismatches", "GpuMemoryUsed", "QueueLength",
}  # fmt: skip
# SageMaker's own endpoint metrics in AWS/SageMaker (developer guide, "Amazon SageMaker AI
# metrics in Amazon CloudWatch": endpoint invocation metrics and asynchronous inference metrics).
SAGEMAKER_METRICS = {
    "Invocations", "InvocationsPerInstance", "ModelLatency", "OverheadLatency",
    "Invocation4XXErrors", "Invocation5XXErrors", "ModelSetupTime",
    "ApproximateBacklogSize", "ApproximateBacklogSizePerInstance",
    "ApproximateAgeOfOldestRequest", "HasBacklogWithoutCapacity",
}  # fmt: skip


def dashboard_metrics(body: dict) -> list[tuple[str, str, dict]]:
    found = []
    for widget in body["widgets"]:
        for line in widget["properties"]["metrics"]:
            names = [x for x in line if not isinstance(x, dict)]
            namespace, metric, dims = names[0], names[1], names[2:]
            found.append((namespace, metric, dict(zip(dims[::2], dims[1::2], strict=True))))
    return found


def test_each_endpoint_has_a_dashboard_of_emitted_metrics_only(deployment, out):
    cloudwatch = deployment.client("cloudwatch")
    assert set(out["dashboard_names"]) == {"sync", "async"}
    for kind, name in out["dashboard_names"].items():
        body = json.loads(cloudwatch.get_dashboard(DashboardName=name)["DashboardBody"])
        metrics = dashboard_metrics(body)
        endpoint = out[f"{kind}_endpoint_name"]
        server = {m for ns, m, _ in metrics if ns == out["metrics_namespace"]}
        sagemaker = {m for ns, m, _ in metrics if ns == "AWS/SageMaker"}
        assert {ns for ns, _, _ in metrics} == {"SDTurbo", "AWS/SageMaker"}
        assert server == SERVER_METRICS  # every one shown, nothing nobody emits
        assert sagemaker <= SAGEMAKER_METRICS
        assert {"Invocations", "ModelLatency", "OverheadLatency", "Invocation4XXErrors",
                "Invocation5XXErrors"} <= sagemaker  # fmt: skip
        assert ("ApproximateBacklogSizePerInstance" in sagemaker) == (kind == "async")
        for namespace, metric, dims in metrics:
            expected = {"EndpointName": endpoint, "VariantName": "AllTraffic"}
            if metric == "ApproximateBacklogSizePerInstance":  # an endpoint-level metric
                expected = {"EndpointName": endpoint}
            assert dims == expected, (namespace, metric)
    # EMF travels in the container's logs: the execution role needs no PutMetricData for it.
    statements = deployment.role_policy(out["execution_role_arn"], "least-privilege")
    namespaces = [
        s["Condition"]["StringLike"]["cloudwatch:namespace"]
        for s in statements
        if "cloudwatch:PutMetricData" in as_list(s["Action"])
    ]
    assert all("SDTurbo" not in as_list(n) for n in namespaces)
    assert any("logs:PutLogEvents" in as_list(s["Action"]) for s in statements)
