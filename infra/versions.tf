terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }

  # Partial configuration: bucket, key, region (and dynamodb_table or use_lockfile) are given at
  # `terraform init -backend-config=...` so no account-specific value lives in the code.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = var.name, managed-by = "terraform" }, var.tags)
  }
}
