# The deployment's settings, committed. The bootstrap (`terraform apply -var-file=production.tfvars`)
# and every plan of .github/workflows/deploy-infrastructure.yml read this one file, so CI plans
# with exactly what was bootstrapped (a variable set only on someone's command line would be
# null in CI, and the plan would destroy what it created). Only image_tag comes from the
# workflow's input. Change a setting here, in a pull request.

region = "us-east-1"

# owner/name of this repository: its main branch may push images (build-and-push.yml) and plan
# (deploy-infrastructure.yml) through GitHub's OIDC provider.
github_repository = "OWNER/REPO"
# false when the account already has token.actions.githubusercontent.com as an OIDC provider.
create_github_oidc_provider = true
# The bucket and key given to `terraform init -backend-config` (infra/README.md, step 1).
tf_state_bucket = null
tf_state_key    = "sdturbo/terraform.tfstate"

instance_type         = "ml.g5.xlarge"
inference_ami_version = "al2-ami-sagemaker-inference-gpu-3-1"

# Written by `python -m optimize sagemaker-build --tfvars infra/production.tfvars` (step 6).
model_artifact = null

# Server settings: SDTURBO_<FIELD> = "value" (a change rolls out as a new model).
container_environment = {}

alarm_emails = []
