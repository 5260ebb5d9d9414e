# A private VPC for the endpoints: no internet gateway and no NAT. AWS services are reached
# through VPC endpoints, which keeps traffic off the internet and avoids NAT data charges
# (the S3 gateway endpoint is free; model artifacts and async payloads are the bulk of traffic).

data "aws_availability_zones" "available" {
  # checkov:skip=CKV_AWS_394: only the first az_count names (sorted) are used, so a newly added zone cannot change the subnets.
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  # What the instances themselves call: ECR to pull the image, CloudWatch Logs for the
  # container's output (and its EMF metrics). No sagemaker.runtime endpoint: the container is
  # network-isolated and every client calls the endpoints from outside the VPC, so an interface
  # endpoint there would be an hourly charge per AZ with no caller (issue 17, item 11).
  interface_endpoints = {
    ecr_api = "com.amazonaws.${var.region}.ecr.api"
    ecr_dkr = "com.amazonaws.${var.region}.ecr.dkr"
    logs    = "com.amazonaws.${var.region}.logs"
  }
}

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11: flow logs are left to the account's central logging; this VPC has no internet path and only reaches AWS service endpoints.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # required for private DNS on interface endpoints
  tags                 = { Name = var.name }
}

# Strip the default security group of all rules so nothing lands in it by accident.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count             = var.az_count
  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)
  tags              = { Name = "${var.name}-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count          = var.az_count
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

resource "aws_security_group" "model" {
  name        = "${var.name}-model"
  description = "SageMaker endpoint instances: HTTPS out to the VPC endpoints only"
  vpc_id      = aws_vpc.this.id

  egress {
    description     = "HTTPS to the interface endpoints"
    from_port       = 443
    to_port         = 443
    protocol        = "tcp"
    security_groups = [aws_security_group.endpoints.id]
  }

  egress {
    description     = "HTTPS to S3 through the gateway endpoint"
    from_port       = 443
    to_port         = 443
    protocol        = "tcp"
    prefix_list_ids = [aws_vpc_endpoint.s3.prefix_list_id]
  }
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-vpc-endpoints"
  description = "Interface VPC endpoints: HTTPS in from this VPC"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "HTTPS from inside the VPC"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  tags              = { Name = "${var.name}-s3" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.interface_endpoints
  vpc_id              = aws_vpc.this.id
  service_name        = each.value
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  tags                = { Name = "${var.name}-${each.key}" }
}
