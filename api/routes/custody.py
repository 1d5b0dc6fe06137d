"""Routes of key custody: custodians' signed acknowledgements (PCI DSS 3.6.1.2, 3.7.8).

IN PCI SCOPE. The statement is signed with the officer's own token key, and the request
carries their second factor like every key ceremony action (`api.mfa`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.dependencies import Caller, State
from api.errors import ApiError
from api.mfa import require_officer_mfa
from policies.models import Action
from vault.custody import MAX_STATEMENT

router = APIRouter()


class CustodyRequest(BaseModel):
    """A custody statement (canonical JSON, `vault.custody`) and its ecdsa-p256-sha256
    signature (r||s, base64) by the officer's token key."""

    model_config = ConfigDict(extra="forbid")

    # What the audit log records whole; the vault's own bound is the statement it asks
    # for (session 35: 4,096 characters held about 235 key versions, a decade of rotations).
    statement: str = Field(min_length=2, max_length=MAX_STATEMENT)
    signature: str = Field(min_length=4, max_length=200)


@router.get("/v1/admin/keys/custody/statement", tags=["keys"])
def custody_statement(caller: Caller, state: State) -> dict[str, str]:
    """The custody statement the calling officer is to sign today (their identity and
    role, the key versions in force, the date)."""
    if state.custody is None:
        raise ApiError("key custody is not enabled on this node")
    return {"statement": state.custody.statement_for(caller.identity)}


@router.post(
    "/v1/admin/keys/custody",
    status_code=201,
    tags=["keys"],
    dependencies=[require_officer_mfa(Action.KEY_ADMIN)],
)
def acknowledge_custody(body: CustodyRequest, caller: Caller, state: State) -> dict[str, Any]:
    """Record a security officer's signed acknowledgement of key custody: checked against
    their registered MFA key, written to the audit log, carried by evidence bundles."""
    if state.custody is None:
        raise ApiError("key custody is not enabled on this node")
    return state.custody.acknowledge(
        caller.identity, body.statement, body.signature, caller.request_id
    )
