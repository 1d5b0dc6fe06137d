"""schemathesis against the served OpenAPI document over real mTLS: no input may give a
5xx, and every 4xx is problem+json."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import openapi_document
from tests.api.conftest import VaultServer

schema = schemathesis.openapi.from_dict(openapi_document())


def problem_json_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    del ctx, case
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])
        value = content_type[0] if isinstance(content_type, list) else content_type
        assert value.startswith("application/problem+json"), (
            f"{response.status_code} answered with {value!r}"
        )
        body = response.json()
        assert isinstance(body.get("code"), str)
        assert body.get("status") == response.status_code
    return None


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_errors(case: Any, vault_server: VaultServer) -> None:
    identity = "getnet-adapter" if "detokenize" in case.path else "payments"
    if case.path.startswith("/v1/audit"):
        identity = "auditor"
    response = case.call(
        base_url=vault_server.url,
        verify=str(vault_server.pki.ca),
        cert=(
            str(vault_server.pki.client_cert(identity)),
            str(vault_server.pki.client_key(identity)),
        ),
        timeout=10,
    )
    case.validate_response(response, checks=[not_a_server_error, problem_json_on_4xx])
