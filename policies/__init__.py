"""IN PCI SCOPE: who may do what (operations, token formats, reveal level, rate limits).

An empty or missing policy denies everything; checks raise, they never return a boolean.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "engine",
    "errors",
    "formats",
    "loader",
    "models",
]
