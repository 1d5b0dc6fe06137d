"""IN PCI SCOPE, holds card data: format-preserving encryption (NIST SP 800-38G FF1)."""
