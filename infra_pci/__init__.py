"""IN PCI SCOPE (it builds the cardholder data environment): the PCI VPC and the
CloudHSM cluster, provisioned with boto3. The only package that talks to AWS."""
