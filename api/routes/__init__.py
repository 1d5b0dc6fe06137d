"""IN PCI SCOPE: the vault API's routes, one `APIRouter` per area.

`api.app.create_app` includes them in this order, which is the order of the paths in the
OpenAPI document (docs/openapi.json). A route reaches the app's state through the
`api.dependencies.State` dependency, never through a module-level variable.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "audit",
    "capture_sessions",
    "custody",
    "evidence",
    "health",
    "keys",
    "relay",
    "tokens",
]
