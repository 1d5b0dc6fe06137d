"""The relay answers an OUT-OF-SCOPE adapter with the
acquirer's body after `mask_pan_values`; an acquirer that echoes the card in a shape the
detector misses hands the PAN to the out-of-scope identity. docs/api.md: "PANs in the
answer are found in every representation"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import oos_relay_policy, relay_vault
from vault.pan import Pan
from vault.relay import WITHHELD_DETAIL, nested_deeper_than, withhold_sent, withhold_split_pans
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
ADAPTER = CallContext("spiffe://cofre/oos-adapter", "req-relay-oos")


@pytest.fixture
def oos_relay(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    policy = oos_relay_policy(acquirer, ADAPTER.identity)
    with relay_vault(engine, hsm_provider, acquirer, policy) as svc:
        yield svc


SHAPES: dict[str, Any] = {
    "two 8-digit groups": PAN[:8] + " " + PAN[8:],
    "mixed separators": f"{PAN[:4]} {PAN[4:8]}-{PAN[8:12]} {PAN[12:]}",
    "hex word": "a" + PAN + "bcdef0123456789",
    "Arabic-Indic digits": "".join(chr(0x660 + int(d)) for d in PAN),
    "list of 8-digit strings": [PAN[:8], PAN[8:]],
    # Review 26: the values of one object were not joined (lists were).
    "object of 8-digit strings": {"a": PAN[:8], "b": PAN[8:]},
    "object of pieces around other members": {
        "bin": PAN[:6],
        "status": "ok",
        "middle": PAN[6:12],
        "approved": True,
        "last": int(PAN[12:]),
    },
    "object of spaced groups": {
        "first": f"{PAN[:4]} {PAN[4:8]}",
        "rest": f"{PAN[8:12]}-{PAN[12:]}",
    },
    "nested object of pieces": {"card": {"one": PAN[:5], "two": PAN[5:10], "three": PAN[10:]}},
}


@pytest.mark.parametrize("shape", SHAPES.keys())
def test_relay_answer_to_an_out_of_scope_adapter_never_holds_the_pan(
    oos_relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    token = oos_relay.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    acquirer.answer = lambda body: (200, {"status": "APPROVED", "echo": SHAPES[shape]})
    result = oos_relay.relay(ADAPTER, "acq", {"card": {"number": token}})
    text = json.dumps(result.body, ensure_ascii=False)
    digits = "".join(str(int(c)) for c in text if c.isdecimal())
    leaked = PAN in digits  # kept out of the failure message
    assert not leaked


# ------------------------------------------------------------------ the details sent
def test_the_details_sent_are_withheld_wherever_the_answer_echoes_them() -> None:
    answer = {
        "reason": "cvv 739 mismatch; card of ANA SOUZA, exp 11/31",
        "739": "a key",
        "code": 739,
        "amount": 17390,  # the code inside a longer run of digits is another number
        "ref": "x739",  # after a letter it is still a run of digits of its own: withheld
        "names": ["Ana Souza", "Anastasia Souzanova"],
        "ok": True,
    }
    out = withhold_sent(answer, ["739", "Ana Souza", "11/31"])
    text = json.dumps(out)
    assert "739" not in text.replace("17390", "")
    assert "souza" not in text.lower().replace("souzanova", "")
    assert "11/31" not in text
    assert out["amount"] == 17390
    assert out["code"] == WITHHELD_DETAIL
    assert out["names"] == [WITHHELD_DETAIL, "Anastasia Souzanova"]
    assert out["ok"] is True
    assert withhold_sent(answer, []) is answer


def test_a_name_is_withheld_in_the_layouts_cards_and_acquirers_write_it() -> None:
    """Review 27 left these: the name as a magnetic stripe writes it (SURNAME/GIVEN),
    and with its spaces doubled or turned into other whitespace."""
    answer = {
        "track": "SOUZA/ANA MARIA",
        "spaced": "holder ANA  MARIA\tSOUZA declined",
        "slash": "Souza / Ana Maria",
        "kept": "ANA SOUZAS",
        "other": "MARIA/ANA SOUZA",
    }
    out = withhold_sent(answer, ["Ana Maria Souza"])
    assert out == {
        "track": WITHHELD_DETAIL,
        "spaced": f"holder {WITHHELD_DETAIL} declined",
        "slash": WITHHELD_DETAIL,
        "kept": "ANA SOUZAS",
        "other": "MARIA/ANA SOUZA",
    }


def test_depth_is_measured_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    assert nested_deeper_than(deep)
    assert not nested_deeper_than({"a": [{"b": 1}]}, limit=3)
    assert nested_deeper_than({"a": [{"b": 1}]}, limit=2)


def test_a_code_in_other_digits_or_percent_encoded_withholds_the_whole_string() -> None:
    """Review 27: fullwidth and Arabic-Indic digits, and "%22%3A%20%227391%22" (the
    "2" of "%22" made the code no whole run of digits), passed the withholding."""
    answer = {
        "m": "cvv \uff17\uff13\uff19\uff11",
        "n": "\u0667\u0663\u0669\u0661",
        "u": "https://acq.example/r?req=%7B%22security_code%22%3A%20%227391%22%7D",
        "p": "cvv+7391+mismatch",
        "kept": "order 17391, ok",
    }
    out = withhold_sent(answer, ["7391"])
    assert out == {
        "m": WITHHELD_DETAIL,
        "n": WITHHELD_DETAIL,
        "u": WITHHELD_DETAIL,
        "p": f"cvv+{WITHHELD_DETAIL}+mismatch",
        "kept": "order 17391, ok",
    }


def test_a_code_with_leading_zeros_is_withheld_as_a_number_drops_them() -> None:
    out = withhold_sent({"n": 123, "s": "cvv 0123", "t": "00123", "other": 10123}, ["0123"])
    assert out == {"n": WITHHELD_DETAIL, "s": f"cvv {WITHHELD_DETAIL}", "t": WITHHELD_DETAIL,
                   "other": 10123}  # fmt: skip


def test_withholding_a_key_loses_no_other_member() -> None:
    """Review 27: {"7391": ..., "[withheld]": ...} became one member."""
    answer = withhold_sent({"7391": "a", WITHHELD_DETAIL: "b", "x 7391": 1}, ["7391"])
    assert sorted(answer.values(), key=str) == [1, "a", "b"]


def test_only_the_pieces_of_a_pan_sent_are_withheld_from_an_object() -> None:
    """Review 26: an object's values were never joined. Joining them all would take
    ordinary acquirer fields out together (amount, currency, NSU, authorization code
    make 13+ digits), so only the PANs the call sent are looked for."""
    answer = {
        "amount": 17390,
        "currency": "986",
        "nsu": "000123456",
        "auth": "A1B2C3",
        "card": {"bin": PAN[:6], "status": "ok", "rest": int(PAN[6:]), "approved": True},
        "spaced": {"a": f"{PAN[:4]} {PAN[4:8]}", "b": f"{PAN[8:12]}-{PAN[12:]}", "c": "99"},
    }
    out = withhold_split_pans(answer, [PAN])
    assert out["amount"] == 17390
    assert out["currency"] == "986"
    assert out["nsu"] == "000123456"
    assert out["card"] == {
        "bin": WITHHELD_DETAIL,
        "status": "ok",
        "rest": WITHHELD_DETAIL,
        "approved": True,
    }
    assert out["spaced"] == {"a": WITHHELD_DETAIL, "b": WITHHELD_DETAIL, "c": "99"}
    # Ordinary numbers that join to some other card are left alone.
    other = {"a": "41111111", "b": "11111111"}
    assert withhold_split_pans(other, [PAN]) == other
    assert withhold_split_pans(answer, []) is answer
