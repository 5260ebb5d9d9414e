"""``moto_server`` plus the few AWS behaviours this stack needs that moto 5.2.x lacks.

Run it like moto_server: ``python tests/infra/moto_server_shim.py -H 127.0.0.1 -p PORT``.
Each gap is filled with the smallest faithful stand-in, and a later moto that has the call wins:

- Step Functions: the AWS provider validates a definition while planning
  (ValidateStateMachineDefinition) and lists versions after creating one
  (ListStateMachineVersions). moto routes neither, and an unrouted call answers 500, which the
  provider retries for many minutes. moto's ASL parser (a port of LocalStack's) carries the
  static analysers LocalStack answers the first with, so a malformed definition still fails.
- SageMaker: CreateModel drops EnableNetworkIsolation (DescribeModel says false), so every plan
  would replace the model. Here it is kept.
- SageMaker: DescribeEndpointConfig answers an empty DataCaptureConfig for a config created
  without one (AWS leaves it out), which the provider reads as a change that replaces the
  config on every plan. Here an empty one is left out.
- SageMaker: there is no UpdateEndpoint, and CreateEndpoint drops DeploymentConfig, so
  DescribeEndpoint has no LastDeploymentConfig. The provider reads deployment_config from it;
  without it every plan would see the rollback alarms "removed" and, that block being ForceNew,
  replace both endpoints. Here the config is kept and returned, and UpdateEndpoint switches the
  endpoint to the new endpoint config, as AWS does at the end of a blue/green update, unless
  one of its rollback alarms is in ALARM (set one with SetAlarmState): then the update "rolls
  back" as AWS's does, the endpoint InService on its old config (AWS: "Auto-Rollback
  Configuration and Monitoring").
- S3: bucket policies are enforced with their Condition blocks ignored, so the stack's
  TLS-only deny (aws:SecureTransport false) refuses every object request made over the
  emulator's plain HTTP. Conditional statements are left out of that evaluation here; the
  policy's content is checked in test_deploy.py instead.
- S3: GetBucketNotificationConfiguration leaves out EventBridgeConfiguration, so every plan
  would want to turn EventBridge delivery on again. Here it is returned when it is on.
- Step Functions: StartExecution deep-copies the state machine with its earlier executions, and
  one that ran an AWS SDK task holds a lock that cannot be copied, so every later execution
  fails. The copy is made here without the earlier executions.
- EventBridge: rules deliver to logs, SQS and event buses only. A Step Functions target here
  starts an execution with the event as its input (AWS: "Amazon EventBridge targets").
"""

from __future__ import annotations

import json
import sys
import uuid

from moto.cloudwatch.models import cloudwatch_backends
from moto.core.responses import ActionResult
from moto.events.models import Rule
from moto.s3.models import FakeBucket
from moto.s3.responses import S3Response
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse
from moto.server import main
from moto.stepfunctions.parser.asl.parse.asl_parser import ASLParserException
from moto.stepfunctions.parser.asl.static_analyser.express_static_analyser import (
    ExpressStaticAnalyser,
)
from moto.stepfunctions.parser.asl.static_analyser.static_analyser import StaticAnalyser
from moto.stepfunctions.parser.models import StepFunctionsParserBackend
from moto.stepfunctions.responses import StepFunctionResponse, get_backend
from moto.utilities.arns import parse_arn

# --- Step Functions ------------------------------------------------------------------------


def validate_state_machine_definition(self: StepFunctionResponse) -> ActionResult:
    express = self._get_param("type") == "EXPRESS"
    analyser = ExpressStaticAnalyser() if express else StaticAnalyser()
    try:
        analyser.analyse(self._get_param("definition"))
    except ASLParserException as invalid:
        diagnostic = {"severity": "ERROR", "code": "SCHEMA_VALIDATION_FAILED",
                      "message": repr(invalid)}  # fmt: skip
        return ActionResult({"result": "FAIL", "diagnostics": [diagnostic], "truncated": False})
    return ActionResult({"result": "OK", "diagnostics": [], "truncated": False})


def list_state_machine_versions(self: StepFunctionResponse) -> ActionResult:
    machine = self.stepfunction_backend.describe_state_machine(self._get_param("stateMachineArn"))
    versions = sorted(machine.versions.values(), key=lambda v: v.version, reverse=True)
    return ActionResult(
        {
            "stateMachineVersions": [
                {"stateMachineVersionArn": v.arn, "creationDate": v.creation_date} for v in versions
            ]
        }
    )


_moto_start_execution = StepFunctionsParserBackend.start_execution


def start_execution(self, state_machine_arn, name=None, execution_input=None, trace_header=None):
    machine = self.describe_state_machine(state_machine_arn)
    existing = machine._handle_name_input_idempotency(name, execution_input)
    if existing is not None:
        return existing
    earlier, machine.executions = machine.executions, []
    try:
        return _moto_start_execution(self, state_machine_arn, name, execution_input, trace_header)
    finally:
        machine.executions = earlier + machine.executions


# --- SageMaker -----------------------------------------------------------------------------

_moto_create_model = SageMakerResponse.create_model
_moto_create_endpoint = SageMakerResponse.create_endpoint


def create_model(self: SageMakerResponse) -> ActionResult:
    result = _moto_create_model(self)
    model = self.sagemaker_backend._models[self._get_param("ModelName")]
    model.enable_network_isolation = bool(self._get_param("EnableNetworkIsolation"))
    return result


def describe_endpoint_config(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("EndpointConfigName")
    response = self.sagemaker_backend.describe_endpoint_config(name)
    if not response.get("DataCaptureConfig"):
        response = {k: v for k, v in response.items() if k != "DataCaptureConfig"}
    return ActionResult(response)


def create_endpoint(self: SageMakerResponse) -> ActionResult:
    result = _moto_create_endpoint(self)
    endpoint = self.sagemaker_backend.endpoints[self._get_param("EndpointName")]
    # FakeEndpoint's response object lists every attribute that is not None, in CamelCase.
    endpoint.last_deployment_config = self._get_param("DeploymentConfig")
    return result


def update_endpoint(self: SageMakerResponse) -> ActionResult:
    backend = self.sagemaker_backend
    name = self._get_param("EndpointName")
    if name not in backend.endpoints:
        raise ValidationError(message=f"Could not find endpoint '{name}'.")
    endpoint = backend.endpoints[name]
    config_name = self._get_param("EndpointConfigName")
    config = backend.describe_endpoint_config(config_name)  # ValidationError if missing
    deployment = self._get_param("DeploymentConfig") or endpoint.last_deployment_config or {}
    if deployment:
        endpoint.last_deployment_config = deployment
    if _a_rollback_alarm_fires(self, deployment):
        # AWS: the new fleet bakes, an alarm fires, traffic goes back to the old fleet, and the
        # endpoint is InService again on its old config.
        return ActionResult({"EndpointArn": endpoint.arn})
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = endpoint._process_production_variants(
        config["ProductionVariants"]
    )
    endpoint.data_capture_config = config.get("DataCaptureConfig")
    return ActionResult({"EndpointArn": endpoint.arn})


def _a_rollback_alarm_fires(self: SageMakerResponse, deployment: dict) -> bool:
    names = [
        a["AlarmName"] for a in deployment.get("AutoRollbackConfiguration", {}).get("Alarms", [])
    ]
    alarms = cloudwatch_backends[self.current_account][self.region].alarms
    return any(name in alarms and alarms[name].state_value == "ALARM" for name in names)


# --- S3 ------------------------------------------------------------------------------------

_moto_get_bucket_notification = S3Response.get_bucket_notification
_moto_get_permission = FakeBucket.get_permission


def get_permission(self: FakeBucket, action: str, resource: str):
    if self.policy is None:
        return _moto_get_permission(self, action, resource)
    policy = json.loads(self.policy)
    unconditional = [s for s in policy.get("Statement", []) if "Condition" not in s]
    everything, self.policy = (
        self.policy,
        json.dumps({**policy, "Statement": unconditional}).encode(),
    )
    try:
        return _moto_get_permission(self, action, resource)
    finally:
        self.policy = everything


def get_bucket_notification(self: S3Response):
    config = self.backend.get_bucket_notification_configuration(self.bucket_name)
    if not config or config.event_bridge is None:
        return _moto_get_bucket_notification(self)
    serialize = self.serialized

    def with_event_bridge(result: ActionResult):
        return serialize(ActionResult({**result.result, "EventBridgeConfiguration": {}}))

    self.serialized = with_event_bridge
    try:
        return _moto_get_bucket_notification(self)
    finally:
        del self.serialized


# --- EventBridge ---------------------------------------------------------------------------

_moto_send_to_targets = Rule.send_to_targets


def send_to_targets(self: Rule, original_event: dict, transform_input: bool = True) -> None:
    machines = [t for t in self.targets if parse_arn(t["Arn"]).service == "states"]
    others = [t for t in self.targets if t not in machines]
    if machines and self.event_pattern.matches_event(original_event):
        for target in machines:
            arn = parse_arn(target["Arn"])
            get_backend(arn.account, arn.region).start_execution(
                state_machine_arn=target["Arn"],
                name=str(uuid.uuid4()),
                execution_input=json.dumps(original_event, default=str),
            )
    if others:
        self.targets, everything = others, self.targets
        try:
            _moto_send_to_targets(self, original_event, transform_input)
        finally:
            self.targets = everything


def _install() -> None:
    missing = {
        (
            StepFunctionResponse,
            "validate_state_machine_definition",
        ): validate_state_machine_definition,
        (StepFunctionResponse, "list_state_machine_versions"): list_state_machine_versions,
        (SageMakerResponse, "update_endpoint"): update_endpoint,
    }
    for (cls, name), handler in missing.items():
        if not hasattr(cls, name):
            setattr(cls, name, handler)
    SageMakerResponse.create_model = create_model
    SageMakerResponse.create_endpoint = create_endpoint
    SageMakerResponse.describe_endpoint_config = describe_endpoint_config
    S3Response.get_bucket_notification = get_bucket_notification
    FakeBucket.get_permission = get_permission
    Rule.send_to_targets = send_to_targets
    StepFunctionsParserBackend.start_execution = start_execution


_install()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
