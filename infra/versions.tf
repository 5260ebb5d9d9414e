terraform {
  # 1.10 is the first release whose S3 backend locks with a lock file (`use_lockfile`, S3
  # conditional writes); the deploy workflow relies on it (HashiCorp: "Backend Type: s3").
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # inference_ami_version on production variants and blue/green deployment_config on
      # endpoints; .terraform.lock.hcl pins the exact build.
      version = ">= 5.100, < 6.0"
    }
  }

  # Partial configuration: bucket, key, region and use_lockfile are given at
  # `terraform init -backend-config=...` so no account-specific value lives in the code.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = var.name, managed-by = "terraform" }, var.tags)
  }
}
