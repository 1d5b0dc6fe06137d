"""IN PCI SCOPE: who may do what (operations, token formats, reveal level, rate limits).

An empty or missing policy denies everything; checks raise, they never return a boolean.
"""
