"""IN PCI SCOPE (it builds the cardholder data environment): the PCI VPC and the
CloudHSM cluster, provisioned with boto3. The only package that talks to AWS."""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "aws",
    "errors",
    "model",
    "objectstore",
    "provision",
    "rds_auth",
    "verify",
]
