"""Genuine acquirer answers that carry no card: the relay's answer scan must hand them
back as they came (session 41 measured its false positives with them).

Made deterministically from a seed: each answer is made for a `Sale` (the card the relay
sent, its code, name and expiry, and the caller's body), and holds what acquirers put in
an answer: amounts, timestamps, order ids, UUIDs, base64 signatures and nonces, hex
digests, authorization codes, NSUs, phone numbers, IBANs, addresses and dates with their
numbers spelled out (English and Portuguese), masked cards (``412345******1234``: the
sent one's and others'), and tokens of the vault's formats. As JSON, as XML and as form
bodies (answered as text: ``{"body": ...}``). Card-like numbers come from
`tests.support.pans` only; none is ever a whole card in the answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random  # noqa: TID251 - a seeded, reproducible corpus: no secret is drawn here
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.support.pans import card_number
from vault._relay_scan import Sent
from vault.pan import luhn_check_digit
from vault.relay import caller_guesses

# How many answers `genuine_answers` makes by default, and its seed.
COUNT = 3_300
SEED = 41

_BINS = ("412345", "555544", "230412", "601100", "371449", "636368", "506699", "438935")
_NAMES = (
    "Ana Souza",
    "João Conceição",
    "Maria da Silva Santos",
    "John Smith",
    "Mary-Jane O'Neil",
    "Luís Gonçalves",
    "Fernanda Lima",
    "Robert Brown",
)
_EN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_EN_TEENS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_PT = ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove")
_PT_TEENS = (
    "dez",
    "onze",
    "doze",
    "treze",
    "catorze",
    "quinze",
    "dezesseis",
    "dezessete",
    "dezoito",
    "dezenove",
)
_PT_TENS = ("", "", "vinte", "trinta", "quarenta", "cinquenta", "sessenta", "setenta", "oitenta")
_PT_TENS += ("noventa",)
_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTHS_PT = (
    "janeiro",
    "fevereiro",
    "março",
    "abril",
    "maio",
    "junho",
    "julho",
    "agosto",
    "setembro",
    "outubro",
    "novembro",
    "dezembro",
)
_STREETS_EN = ("Main Street", "Oak Avenue", "Elm Road", "Harbour Lane", "King's Way")
_STREETS_PT = ("Rua Sete de Setembro", "Avenida Paulista", "Rua Dois de Julho", "Rua Augusta")
_STREETS_PT += ("Avenida Nove de Julho", "Rua Quinze de Novembro")
_CITIES = ("São Paulo - SP", "Rio de Janeiro - RJ", "Lisboa", "Porto", "London", "Austin, TX")
_DECLINES = (
    "Do not honor",
    "Insufficient funds",
    "Transação não autorizada",
    "Cartão vencido",
    "Exceeds withdrawal limit",
    "Suspected fraud, call issuer",
    "Saldo insuficiente",
)


@dataclass(frozen=True)
class Sale:
    """What one relay sent (the card, its code, name and expiry as month and year) and
    the caller's body (its token in place of the card)."""

    pan: str
    code: str
    name: str
    month: str
    year: str
    token: str
    body: dict[str, Any]


def _words_en(number: int) -> str:
    """`number` (0 to 9,999) in English words."""
    if number < 10:
        return _EN[number]
    if number < 20:
        return _EN_TEENS[number - 10]
    if number < 100:
        tens, unit = divmod(number, 10)
        return _EN_TENS[tens] + (f"-{_EN[unit]}" if unit else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_EN[hundreds]} hundred" + (f" and {_words_en(rest)}" if rest else "")
    thousands, rest = divmod(number, 1000)
    return f"{_words_en(thousands)} thousand" + (f" {_words_en(rest)}" if rest else "")


def _words_pt(number: int) -> str:
    """`number` (0 to 9,999) in Portuguese words."""
    hundreds = ("", "cento", "duzentos", "trezentos", "quatrocentos", "quinhentos")
    hundreds += ("seiscentos", "setecentos", "oitocentos", "novecentos")
    if number < 10:
        return _PT[number]
    if number < 20:
        return _PT_TEENS[number - 10]
    if number < 100:
        tens, unit = divmod(number, 10)
        return _PT_TENS[tens] + (f" e {_PT[unit]}" if unit else "")
    if number < 1000:
        if number == 100:
            return "cem"
        high, rest = divmod(number, 100)
        return hundreds[high] + (f" e {_words_pt(rest)}" if rest else "")
    thousands, rest = divmod(number, 1000)
    head = "mil" if thousands == 1 else f"{_words_pt(thousands)} mil"
    return head + (f" e {_words_pt(rest)}" if rest else "")


class _Draw:
    """The corpus's draws, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data

    def digits(self, count: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(count))

    def alnum(self, count: int) -> str:
        return "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(count))

    def pick(self, options: tuple[Any, ...] | list[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def bytes_(self, count: int) -> bytes:
        return self.rng.randbytes(count)

    def uuid(self) -> str:
        return str(uuid.UUID(bytes=self.bytes_(16), version=4))

    def b64(self, count: int, *, url: bool = False) -> str:
        data = self.bytes_(count)
        return (base64.urlsafe_b64encode if url else base64.b64encode)(data).decode()

    def timestamp(self) -> str:
        return (
            f"2026-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}T"
            f"{self.rng.randint(0, 23):02d}:{self.rng.randint(0, 59):02d}:"
            f"{self.rng.randint(0, 59):02d}.{self.digits(3)}Z"
        )

    def cents(self) -> int:
        return self.rng.choice((self.rng.randint(100, 99_999), self.rng.randint(100, 5_000_00)))

    def phone(self) -> str:
        return self.pick(
            (
                f"+55 11 9{self.digits(4)}-{self.digits(4)}",
                f"({self.digits(2)}) {self.digits(4)}-{self.digits(4)}",
                f"+55{self.digits(2)}9{self.digits(8)}",
                f"+1 (415) 555-{self.digits(4)}",
                f"+351 21 {self.digits(3)} {self.digits(4)}",
            )
        )

    def iban(self) -> str:
        return self.pick(
            (
                f"BR{self.digits(2)} {self.digits(4)} {self.digits(4)} {self.digits(4)} "
                f"{self.digits(4)} {self.digits(4)} {self.digits(3)}C 1",
                f"PT50{self.digits(21)}",
                f"DE{self.digits(2)} {self.digits(4)} {self.digits(4)} {self.digits(4)} "
                f"{self.digits(4)} {self.digits(2)}",
                f"GB{self.digits(2)}NWBK{self.digits(14)}",
            )
        )

    def masked(self, pan: str) -> str:
        return self.pick(
            (
                f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}",
                f"{pan[:4]} {pan[4:6]}** **** {pan[-4:]}",
                f"************{pan[-4:]}",
                f"XXXX-XXXX-XXXX-{pan[-4:]}",
                f"{pan[:6]}xxxxxx{pan[-4:]}",
            )
        )

    def token(self, pan: str) -> str:
        """A token of `pan_bin6_last4`'s shape: its BIN and last four, Luhn-invalid."""
        while True:
            value = pan[:6] + self.digits(len(pan) - 10) + pan[-4:]
            body = value[:-1]
            if luhn_check_digit(body) != value[-1]:
                return value

    def other_card(self) -> str:
        return card_number(self.pick(_BINS), self.rng.randrange(10**8))

    def address(self) -> str:
        number = self.rng.randint(1, 2999)
        if self.rng.random() < 0.5:
            return (
                f"{_words_en(number).title()} {self.pick(_STREETS_EN)}, "
                f"apartment {_words_en(self.rng.randint(1, 40))}, {self.pick(_CITIES)}"
            )
        return (
            f"{self.pick(_STREETS_PT)}, número {_words_pt(number)}, "
            f"apto {self.rng.randint(1, 400)}, {self.pick(_CITIES)}, "
            f"CEP {self.digits(5)}-{self.digits(3)}"
        )

    def date_in_words(self) -> str:
        day, month = self.rng.randint(1, 28), self.rng.randrange(12)
        if self.rng.random() < 0.5:
            return f"the {_words_en(day)} of {_MONTHS_EN[month]}, two thousand twenty-six"
        return f"{_words_pt(day)} de {_MONTHS_PT[month]} de dois mil e vinte e seis"

    def amount_in_words(self, cents: int) -> str:
        units, rest = divmod(cents, 100)
        units %= 10_000
        if self.rng.random() < 0.5:
            return f"{_words_en(units)} dollars and {_words_en(rest)} cents"
        return f"{_words_pt(units)} reais e {_words_pt(rest)} centavos"


def _sale(draw: _Draw) -> Sale:
    pan = card_number(draw.pick(_BINS), draw.rng.randrange(10**8), draw.pick((16, 16, 16, 15)))
    token = draw.token(pan)
    amount = draw.cents()
    body: dict[str, Any] = {
        "card": {"number": token},
        "order_id": draw.pick((f"o-{draw.digits(6)}", f"PED{draw.digits(8)}", draw.uuid())),
        "amount": draw.pick((amount, f"{amount / 100:.2f}")),
        "currency": draw.pick(("BRL", "USD", "EUR")),
        "installments": draw.rng.randint(1, 12),
    }
    return Sale(
        pan=pan,
        code=draw.digits(4 if pan.startswith("37") else 3),
        name=draw.pick(_NAMES),
        month=f"{draw.rng.randint(1, 12):02d}",
        year=f"20{draw.rng.randint(27, 35)}",
        token=token,
        body=body,
    )


def _fields(draw: _Draw, sale: Sale) -> dict[str, Any]:
    """An authorization's usual fields, some of each answer's."""
    amount = sale.body["amount"]
    cents = amount if isinstance(amount, int) else round(float(amount) * 100)
    fields: dict[str, Any] = {
        "status": draw.pick(("APPROVED", "AUTHORIZED", "DENIED", "PENDING", "CAPTURED")),
        "authorization_code": draw.pick((draw.alnum(6), draw.digits(6))),
        "nsu": draw.digits(draw.pick((6, 9, 12))),
        "tid": draw.pick((draw.digits(20), draw.alnum(20), draw.uuid())),
        "payment_id": draw.uuid(),
        "order_id": sale.body["order_id"],
        "amount": amount,
        "amount_cents": cents,
        "currency": sale.body["currency"],
        "installments": sale.body["installments"],
        "created_at": draw.timestamp(),
        "card": {
            "masked": draw.masked(sale.pan),
            "brand": draw.pick(("VISA", "MASTERCARD", "ELO", "AMEX", "HIPERCARD")),
            "bin": sale.pan[:6],
            "last_four": sale.pan[-4:],
        },
        "signature": draw.b64(draw.pick((32, 64, 72))),
        "nonce": draw.b64(draw.pick((12, 16, 24)), url=draw.rng.random() < 0.5),
        "digest": hashlib.sha256(draw.bytes_(16)).hexdigest(),
        "trace_id": draw.bytes_(16).hex(),
        "span_id": draw.bytes_(8).hex(),
        "merchant": {
            "id": draw.digits(draw.pick((10, 15))),
            "phone": draw.phone(),
            "iban": draw.iban(),
            "address": draw.address(),
        },
        "message": draw.pick(
            (
                f"Transaction approved on {draw.date_in_words()}",
                f"Valor: {draw.amount_in_words(cents)}",
                f"{draw.pick(_DECLINES)} ({draw.digits(2)})",
                f"Call {draw.phone()} quoting {draw.alnum(8)}",
                f"Parcelado em {_words_pt(sale.body['installments'])} vezes",
            )
        ),
        "customer_token": draw.token(sale.pan),
        "previous_cards": [draw.masked(draw.other_card()) for _ in range(draw.rng.randint(0, 3))],
        "links": [
            {"rel": "self", "href": f"https://api.acquirer.example/v1/payments/{draw.uuid()}"}
        ],
        "jwt": ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
            for part in (
                {"alg": "ES256", "kid": draw.alnum(8)},
                {"sub": draw.uuid(), "iat": 1_796_000_000 + draw.rng.randrange(10**6)},
            )
        )
        + "."
        + draw.b64(64, url=True).rstrip("="),
        "history": [
            {"at": draw.timestamp(), "event": draw.pick(("created", "authorized", "captured"))}
            for _ in range(draw.rng.randint(0, 4))
        ],
        "fees": [draw.rng.randint(1, 999) for _ in range(draw.rng.randint(0, 6))],
    }
    return fields


def _json(draw: _Draw, sale: Sale) -> Any:
    fields = _fields(draw, sale)
    keys = list(fields)
    draw.rng.shuffle(keys)
    kept = keys[: draw.rng.randint(6, len(keys))]
    return {key: fields[key] for key in kept}


def _xml(draw: _Draw, sale: Sale) -> Any:
    fields = _fields(draw, sale)
    inner = "".join(
        f"<{key}>{value}</{key}>"
        for key, value in fields.items()
        if isinstance(value, str | int) and draw.rng.random() < 0.7
    )
    card = fields["card"]
    card_xml = f"<card><masked>{card['masked']}</masked><brand>{card['brand']}</brand></card>"
    document = f'<?xml version="1.0" encoding="UTF-8"?><response>{inner}{card_xml}</response>'
    if draw.rng.random() < 0.3:
        document = (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            + document.split("?>", 1)[1]
            + "</soap:Body></soap:Envelope>"
        )
    return {"body": document}


def _form(draw: _Draw, sale: Sale) -> Any:
    fields = _fields(draw, sale)
    flat = {
        key: value
        for key, value in fields.items()
        if isinstance(value, str | int) and draw.rng.random() < 0.7
    }
    flat["card_masked"] = fields["card"]["masked"]
    return {"body": urlencode(flat)}


_SHAPES: tuple[Callable[[_Draw, Sale], Any], ...] = (_json, _json, _json, _xml, _form)


def genuine_answers(count: int = COUNT, seed: int = SEED) -> Iterator[tuple[str, Sale, Any]]:
    """`count` (shape, sale, answer) made from `seed`, the same every run: the answer an
    acquirer gives to the relay of `sale`, with no card in it."""
    draw = _Draw(seed)
    for _ in range(count):
        sale = _sale(draw)
        shape = draw.pick(_SHAPES)
        yield shape.__name__.lstrip("_"), sale, shape(draw, sale)


def sent_of(sale: Sale) -> Sent:
    """What a relay of `sale` through a route that puts the card's number, code, name and
    expiry (month and year apart, the year in four digits: `getnet-authorize`) tells the
    answer scan it sent, as `vault.operations.relay` makes it."""
    short = sale.year[2:]
    layouts = [f"{sale.month}/{short}", f"{sale.month}/{sale.year}", f"{sale.year}-{sale.month}"]
    return Sent(
        details=[sale.code, sale.name, *layouts],
        pans=[sale.pan],
        month_years=[(sale.month, (short, sale.year))],
        guesses=caller_guesses(sale.body, {sale.token}),
    )
