"""IN PCI SCOPE: PCI DSS evidence bundles, signed, verifiable offline by a QSA."""
