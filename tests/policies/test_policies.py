"""Policy loading and authorisation: deny by default, clear messages, raise on denial."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, PolicyInvalid
from policies.formats import BUILTIN_FORMATS, FormatSpec, FormatType
from policies.loader import load_policy, parse_policy
from policies.models import Action, Policy, Reveal

SAMPLE = """
version = 1

[formats.card_fpe_19]
type = "fpe"
pan_lengths = [16, 19]

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "lookup"]
formats = ["pan_bin6_last4", "card_fpe_19"]
reveal = "masked"
rate_limit = { per_second = 100, burst = 5 }

[identities."spiffe://cofre/getnet-adapter"]
operations = ["detokenize", "relay"]
reveal = "full"

[identities."spiffe://cofre/officer-alice"]
role = "security_officer"
operations = ["key_admin", "audit_read"]

[identities."spiffe://cofre/qsa"]
role = "auditor"
operations = ["audit_read", "evidence_export"]
"""


def engine() -> PolicyEngine:
    return PolicyEngine(parse_policy(SAMPLE, kind="toml").policy)


def test_sample_policy_authorizes() -> None:
    e = engine()
    rules = e.authorize("spiffe://cofre/payments", Action.TOKENIZE, token_format="pan_bin6_last4")
    assert rules.reveal is Reveal.MASKED
    e.authorize("spiffe://cofre/getnet-adapter", Action.DETOKENIZE)
    assert e.token_format("card_fpe_19").type is FormatType.FPE
    assert e.policy.officers() == {"spiffe://cofre/officer-alice"}


@pytest.mark.parametrize(
    ("identity", "action", "fmt", "message"),
    [
        ("spiffe://cofre/unknown", Action.TOKENIZE, None, "not in the policy"),
        ("spiffe://cofre/payments", Action.DETOKENIZE, None, "may not call detokenize"),
        ("spiffe://cofre/payments", Action.TOKENIZE, "pan_last4", "may not use token format"),
        ("spiffe://cofre/officer-alice", Action.TOKENIZE, None, "may not call tokenize"),
        ("spiffe://cofre/qsa", Action.KEY_ADMIN, None, "may not call key_admin"),
    ],
)
def test_denials_raise(identity: str, action: Action, fmt: str | None, message: str) -> None:
    with pytest.raises(PolicyDenied, match=message):
        engine().authorize(identity, action, token_format=fmt)


def test_empty_and_missing_policy_deny_everything(tmp_path: Path) -> None:
    empty = tmp_path / "policy.toml"
    empty.write_text("")
    for loaded in (load_policy(empty), load_policy(tmp_path / "absent.toml"), load_policy(None)):
        e = PolicyEngine(loaded.policy)
        for action in Action:
            with pytest.raises(PolicyDenied):
                e.authorize("spiffe://cofre/payments", action)


def test_yaml_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "identities:\n  spiffe://cofre/ledger:\n    operations: [detokenize_masked]\n"
        "    reveal: masked\n"
    )
    e = PolicyEngine(load_policy(path).policy)
    e.authorize("spiffe://cofre/ledger", Action.DETOKENIZE_MASKED)


def test_fpe_on_15_digit_pans_rejected_at_load() -> None:
    text = (
        "[formats.amex_fpe]\ntype = 'fpe'\nkeep_leading = 6\nkeep_trailing = 4\n"
        "pan_lengths = [15]\n"
    )
    with pytest.raises(PolicyInvalid) as info:
        parse_policy(text, kind="toml", source="policy.toml")
    message = str(info.value)
    assert "formats.amex_fpe" in message
    assert "5 free digits on 15-digit PANs" in message
    assert "10^6" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[identities.'spiffe://x/y']\noperations = ['tokenise']\n", "operations"),
        ("[identities.'spiffe://x/y']\noperatons = ['tokenize']\n", "operatons"),
        ("unknown_top = 1\n", "unknown_top"),
        (
            "[identities.'spiffe://x/y']\noperations = ['tokenize']\nformats = ['nope']\n",
            "unknown formats",
        ),
        ("[identities.'spiffe://x/y']\noperations = ['tokenize']\n", "names no format"),
        ("[identities.payments]\noperations = []\n", "SAN URI"),
        (
            "[identities.'spiffe://x/o']\nrole = 'security_officer'\nreveal = 'full'\n"
            "operations = ['key_admin']\n",
            "never get full reveal",
        ),
        (
            "[identities.'spiffe://x/o']\nrole = 'security_officer'\noperations = ['detokenize']\n"
            "reveal = 'masked'\n",
            "may not call detokenize",
        ),
        (
            "[identities.'spiffe://x/o']\nrole = 'security_officer'\n"
            "operations = ['key_admin', 'detokenize_masked']\nreveal = 'masked'\n",
            "may not call detokenize_masked",
        ),
        (
            "[identities.'spiffe://x/o']\nrole = 'security_officer'\n"
            "operations = ['key_admin', 'metadata', 'capture']\n",
            "may not call capture, metadata",
        ),
        (
            "[identities.'spiffe://x/o']\nrole = 'security_officer'\n"
            "operations = ['key_admin']\nreveal = 'masked'\n",
            "officers see no card data",
        ),
        (
            "[identities.'spiffe://x/a']\nrole = 'auditor'\noperations = ['tokenize']\n"
            "formats = ['uuid']\n",
            "auditors may not call tokenize",
        ),
        ("[identities.'spiffe://x/s']\noperations = ['key_admin']\n", "belong to security"),
        ("[identities.'spiffe://x/s']\noperations = ['detokenize']\n", "detokenize needs"),
        ("[formats.pan_last4]\ntype = 'random'\n", "built in"),
        ("key_approvals_required = 1\n", "key_approvals_required"),
        (
            "[identities.'spiffe://x/r']\noperations = ['tokenize']\nformats = ['uuid']\n"
            "rate_limit = { per_second = inf, burst = 5 }\n",
            "per_second",
        ),
        (
            "[identities.'spiffe://x/r']\noperations = ['tokenize']\nformats = ['uuid']\n"
            "rate_limit = { per_second = 1e-310, burst = 5 }\n",
            "per_second",
        ),
        (
            "[identities.'spiffe://x/r']\noperations = ['tokenize']\nformats = ['uuid']\n"
            "rate_limit = { per_second = 1, burst = 1000000000000 }\n",
            "burst",
        ),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_invalid_policies_say_why(text: str, fragment: str) -> None:
    with pytest.raises(PolicyInvalid, match=r"invalid|not valid") as info:
        parse_policy(text, kind="toml")
    assert fragment in str(info.value)


def test_domains_default_to_the_identity() -> None:
    e = engine()
    assert e.domain("spiffe://cofre/payments") == "spiffe://cofre/payments"
    assert e.readable_domains("spiffe://cofre/payments") == {"spiffe://cofre/payments"}
    shared = parse_policy(
        """
[identities."spiffe://cofre/ledger"]
operations = ["detokenize_masked"]
reveal = "masked"
domain = "books"
read_domains = ["spiffe://cofre/payments"]
""",
        kind="toml",
    ).policy
    e = PolicyEngine(shared)
    assert e.domain("spiffe://cofre/ledger") == "books"
    assert e.readable_domains("spiffe://cofre/ledger") == {"books", "spiffe://cofre/payments"}
    with pytest.raises(PolicyDenied):
        e.domain("spiffe://cofre/unknown")


@pytest.mark.parametrize(
    "text",
    [
        '[identities."spiffe://cofre/a"]\ndomain = "books\\u00001"\n',
        '[identities."spiffe://cofre/a"]\nread_domains = ["books\\u0000"]\n',
        '[identities."spiffe://cofre/a\\u00001"]\noperations = ["tokenize"]\n'
        'formats = ["pan_fpe"]\n',
    ],
)
def test_a_token_domain_holds_no_nul(text: str) -> None:
    """Review 43: an FF1 re-issue's tweak is its domain, a NUL and a re-issue number
    (`vault.tokens.FpeTokenizer.candidates`), which holds apart from every domain's own
    tweak only if no domain holds a NUL; nothing refused one (nor an identity, which is
    its own domain by default), and PostgreSQL cannot store one either."""
    with pytest.raises(PolicyInvalid, match="NUL"):
        parse_policy(text, kind="toml")


@pytest.mark.parametrize(
    ("operations", "reveal", "fragment"),
    [
        ('["tokenize"]', "none", "may not call tokenize"),
        ('["lookup"]', "none", "may not call lookup"),
        ('["detokenize"]', "full", "never gets full reveal"),
    ],
)
def test_out_of_scope_identities_never_hold_a_pan(
    operations: str, reveal: str, fragment: str
) -> None:
    text = f"""
[identities."spiffe://cofre/adapter"]
scope = "out"
operations = {operations}
formats = ["uuid"]
reveal = "{reveal}"
"""
    with pytest.raises(PolicyInvalid) as info:
        parse_policy(text, kind="toml")
    assert fragment in str(info.value)


def test_out_of_scope_identities_may_relay_and_see_masked() -> None:
    policy = parse_policy(
        """
[identities."spiffe://cofre/adapter"]
scope = "out"
operations = ["relay", "detokenize", "detokenize_masked"]
reveal = "masked"
""",
        kind="toml",
    ).policy
    assert policy.identities["spiffe://cofre/adapter"].scope.value == "out"


def test_luhn_exemptions_are_named_ranges() -> None:
    policy = parse_policy(
        """
[luhn_exempt.acme-private-label]
prefixes = ["600012", "600013"]
description = "ACME store card, no check digit"
""",
        kind="toml",
    ).policy
    assert policy.luhn_exempt_prefix("6000121234567890") == "acme-private-label"
    assert policy.luhn_exempt_prefix("4111111111111111") is None
    with pytest.raises(PolicyInvalid):
        parse_policy('[luhn_exempt.x]\nprefixes = ["41a"]', kind="toml")


def test_oracle_guard_defaults_low() -> None:
    rules = engine().rules_for("spiffe://cofre/payments")
    assert rules.oracle_guard.max_pans_per_bucket == 10
    assert rules.oracle_guard.window_seconds == 86400
    assert rules.quota is None


def test_builtin_formats() -> None:
    assert set(BUILTIN_FORMATS) >= {
        "pan_bin6_last4",
        "pan_bin8_last4",
        "pan_last4",
        "pan_fpe",
        "uuid",
    }
    assert Policy().format("pan_fpe") == BUILTIN_FORMATS["pan_fpe"]
    # BIN-8 only on PANs of 16 digits or more (PCI SSC FAQ 1091), in every mode.
    with pytest.raises(ValueError, match="16 digits or more"):
        FormatSpec(type=FormatType.RANDOM, keep_leading=8, keep_trailing=4, pan_lengths=(15,))
    assert min(BUILTIN_FORMATS["pan_bin8_last4"].pan_lengths) == 16
    with pytest.raises(ValueError, match="on_small_space must be 'refuse'"):
        FormatSpec(type=FormatType.FPE, on_small_space="random")


@pytest.mark.parametrize("operation", ["detokenize", "detokenize_masked"])
def test_a_masked_reveal_needs_reveal_masked_or_full(operation: str) -> None:
    """The reveal review: an identity with ``detokenize_masked`` and reveal "none" (the
    default) got masked PANs (BIN and last four) although its policy reveals nothing.
    A masked reveal is a reveal: refused at load, the reload keeping the policy in force."""
    for scope in ("in", "out"):
        text = f"""
[identities."spiffe://cofre/ledger"]
scope = "{scope}"
operations = ["{operation}"]
"""
        with pytest.raises(PolicyInvalid, match=f"{operation} needs reveal 'full' or 'masked'"):
            parse_policy(text, kind="toml")
        parse_policy(text + 'reveal = "masked"\n', kind="toml")


@pytest.mark.parametrize("origins", ["", "capture_origins = []\n"])
def test_a_policy_that_grants_capture_names_its_origins(origins: str) -> None:
    """The capture review's origins gap: an identity with ``capture`` and no
    ``capture_origins`` could open sessions for any origin, so a stolen certificate of
    the shop's backend hosted the vault's genuine card fields on a phishing page. Such
    a policy is refused at load, naming the identity (the officer learns it when the
    policy loads, not when a shopper checks out); an empty list names no origin."""
    text = f"""
[identities."spiffe://cofre/shop-backend"]
scope = "out"
operations = ["capture"]
formats = ["uuid"]
{origins}"""
    with pytest.raises(PolicyInvalid, match=r"'spiffe://cofre/shop-backend'.*capture_origins"):
        parse_policy(text, kind="toml")
    named = text.replace(origins, "") + 'capture_origins = ["https://shop.example"]\n'
    rules = parse_policy(named, kind="toml").policy.identities["spiffe://cofre/shop-backend"]
    assert rules.capture_origins == frozenset({"https://shop.example"})
    # Without `capture`, no origin is needed (nothing to bind).
    parse_policy('[identities."spiffe://cofre/x"]\noperations = ["metadata"]\n', kind="toml")
