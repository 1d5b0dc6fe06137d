"""IN PCI SCOPE: the FastAPI application served over mutual TLS.

The only package that imports FastAPI. Callers are identified by the SAN URI of their
verified client certificate, never by a header.
"""
