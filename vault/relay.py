"""The outbound relay (what VGS calls an outbound proxy): an adapter sends a body with
tokens in marked places; the vault puts the PANs there, calls the acquirer over TLS, and
hands back the acquirer's answer with any PAN in it tokenized or masked.

IN PCI SCOPE, holds card data. The body with PANs exists only in this process's memory
between detokenizing and sending. This module is the bodies' side: JSON pointers, and
what an answer must not give back (the card details sent, a PAN split over an object's
values, any PAN-like value); `vault.relay_client` is the call itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from cofre.redaction import MASK_TRAILING, luhn_valid, mask_pan_values, masked_leading
from vault._relay_details import (
    DECODED_RUN,
    DIGIT_RUN,
    EXPIRY_LIKE,
    CallerGuesses,
    ascii_digits,
    decoded_details,
    digit_values,
    escapes_hold,
    guesses_of,
    run_key,
    sent_patterns,
    without_written,
)
from vault._relay_dumps import joined_lists, withhold_lists
from vault._relay_echo import AnswerBound, escaped_forms, read_as
from vault._relay_month_year import WITHHELD_DETAIL, caller_month_years  # the detail's stand-in
from vault.errors import RelayBodyInvalid

# How deep a relay body or an upstream's answer may nest. Acquirers' bodies are a few
# levels deep; Python's recursion (a copy, the masking) gives out near 700 (review 26).
MAX_DEPTH: Final = 64


@dataclass(frozen=True)
class RelayResult:
    status: int
    body: Any


def _steps(pointer: str) -> list[str]:
    # RFC 6901: "~1" is "/", "~0" is "~".
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


def _parent(document: Any, pointer: str) -> tuple[Any, str | int]:
    steps = _steps(pointer)
    node = document
    for step in steps[:-1]:
        node = _child(node, step, pointer)
    last: str | int = steps[-1]
    if isinstance(node, list):
        if not str(last).isdigit() or int(last) >= len(node):
            raise RelayBodyInvalid(f"the body has nothing at {pointer}")
        last = int(last)
    elif not isinstance(node, dict) or last not in node:
        raise RelayBodyInvalid(f"the body has nothing at {pointer}")
    return node, last


def _child(node: Any, step: str, pointer: str) -> Any:
    if isinstance(node, dict) and step in node:
        return node[step]
    if isinstance(node, list) and step.isdigit() and int(step) < len(node):
        return node[int(step)]
    raise RelayBodyInvalid(f"the body has nothing at {pointer}")


def get_pointer(document: Any, pointer: str) -> Any:
    parent, key = _parent(document, pointer)
    return parent[key]


def set_pointer(document: Any, pointer: str, value: Any) -> None:
    parent, key = _parent(document, pointer)
    parent[key] = value


def drop_pointer(document: Any, pointer: str) -> None:
    """Remove the member `pointer` names from `document` if it is there."""
    try:
        parent, key = _parent(document, pointer)
    except RelayBodyInvalid:
        return
    if isinstance(parent, dict):
        del parent[key]


def add_pointer(document: Any, pointer: str, value: Any) -> None:
    """Add `value` as the member `pointer` names, in an object the body already has.

    Raises `RelayBodyInvalid` when the parent object is missing, or when the member is
    already there: only the vault puts card details in, so a caller that sends one
    (a code, an expiry) is refused rather than overwritten or forwarded."""
    steps = _steps(pointer)
    node = document
    for step in steps[:-1]:
        node = _child(node, step, pointer)
    if not isinstance(node, dict):
        raise RelayBodyInvalid(f"the body has no object to hold {pointer}")
    if steps[-1] in node:
        raise RelayBodyInvalid(
            f"the body already has a value at {pointer}, where the vault puts the card's "
            "details: send only the card token"
        )
    node[steps[-1]] = value


def nested_deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` (parsed JSON) has objects or arrays more than `limit` deep;
    without recursion, so any depth is answered."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def caller_guesses(body: Any, tokens: Collection[str] = ()) -> CallerGuesses:
    """What `withhold_sent` must withhold beside the details sent, for a relay whose
    caller sent `body`: every run of three digits or more that is at most four once its
    leading zeros are dropped (a code, an expiry as MMYY; with leading zeros, as the
    code's are) and every expiry-like text the body holds,
    as written, percent-decoded or in ASCII digits. Review 36: the details were
    withheld only where they matched, so a caller that wrote all 1,000 codes (or every
    month of ten years) into a field the acquirer echoes was told by the one
    `[withheld]` which was the card's, in the one relay that sends the code. Withheld
    whether they match or not, the caller's own texts tell it nothing. The `tokens` the
    vault replaces are left out: the card's last four in one is no guess."""
    runs: set[str] = set()
    layouts: set[str] = set()

    def add(forms: set[str]) -> None:
        for form in forms:
            # Any run of three digits or more that reads a code once its zeros are
            # dropped: a sent code is withheld with leading zeros too (`detail_pattern`), so
            # guesses written as 00739 told the card's apart (review 36b).
            runs.update(
                key for r in DIGIT_RUN.findall(form) if len(r) >= 3 and len(key := run_key(r)) <= 4
            )
            layouts.update(EXPIRY_LIKE.findall(form))

    def decodings(text: str) -> None:
        # atk49b: every shape the answer's checks read a detail in (words decoded, an
        # array of its bytes), so that a guess the caller wrote encoded (``NzM5``, an
        # array of its bytes) is withheld as the card's code would be.
        def read(shape: str) -> bool:
            # As `withhold_encoded_pans` reads a decoding (`DecodedDetails.search`): also
            # without its NULs (UTF-16 text of ASCII) and as UTF-8, its runs as
            # `DECODED_RUN` reads them (none beside a byte past ASCII), its layouts and
            # the runs inside them. Rev49e: read as the caller's texts are (NFKC, runs
            # beside any byte), the noise of a genuine body's nonces and signatures
            # (superscripts, digits among bytes past ASCII) made runs of their own, and
            # those withheld the minutes of timestamps and digits of ids in 0.6% of
            # genuine answers.
            plain = shape.replace("\x00", "")
            for one in {shape, plain, _as_utf8(plain)}:
                found = EXPIRY_LIKE.findall(one)
                layouts.update(found)
                inside = [r for layout in found for r in DIGIT_RUN.findall(layout)]
                runs.update(
                    key
                    for r in [*DECODED_RUN.findall(one), *inside]
                    if len(r) >= 3 and len(key := run_key(r)) <= 4
                )
            return False

        read_as(text, lambda _shape: False, decoded=read)  # the decodings details are read in

    def note(_index: int, text: str) -> None:
        if text in tokens:
            return
        forms: set[str] = set()
        # Also without its NULs, as `withhold_sent` reads the answer's texts (rev49e: a
        # guess written ``7\u00003\u00009`` was no run of three digits, and the card's
        # code echoed so came back withheld alone).
        for one in {text, text.replace("\x00", "")}:
            # Folded too, as `escapes_hold` folds an answer's text past ASCII (rev49e:
            # a guess written ``⁷³⁹`` or ``⑦③⑨`` was none, and the card's code so was
            # withheld alone).
            folded = unicodedata.normalize("NFKC", one)
            forms.update((one, unquote_plus(one), ascii_digits(one), folded, ascii_digits(folded)))
            for shape in escaped_forms(one, lone_words=False):
                forms.update((shape, ascii_digits(shape), unicodedata.normalize("NFKC", shape)))
        # Its words decoded as written: `withhold_encoded_pans` decodes the answer's
        # texts with their NULs (the NUL-less text is read for its escapes only).
        decodings(text)
        add(forms)

    _replace_texts(body, note)
    # An array's items read joined, as `withhold_encoded_pans` reads the answer's.
    for _items, joins in joined_lists(body):
        for join in joins:
            decodings(join)
    return CallerGuesses(
        layouts=guesses_of(EXPIRY_LIKE, frozenset(layouts)),
        runs=guesses_of(DIGIT_RUN, frozenset(runs)),
        month_years=caller_month_years(body),
    )


def withhold_sent(value: Any, sent: Sequence[str], guesses: CallerGuesses | None = None) -> Any:
    """`value` (an upstream's answer) with every occurrence of the card details the
    vault sent (`sent`: the security code, the cardholder's name, the expiry) replaced
    by `WITHHELD_DETAIL`, wherever the upstream echoed them: a value, a key, inside a
    message. A digit string is matched as a whole run of digits (a code's leading zeros
    optional, as a number drops them), a name as whole words in any case (any
    whitespace between them, or SURNAME/GIVEN as a magnetic stripe has it); a number
    whose digits hold one becomes the string. A string that holds one only once
    with its escapes undone (`vault._relay_echo.escaped_forms`: percent, also twice,
    HTML entities, JSON escapes, quoted-printable, UTF-7) or with other scripts' digits
    read as ASCII (fullwidth, Arabic-Indic) is withheld whole; one that holds one once a
    word of it is decoded, before the masking (`withhold_encoded_pans`). The answer goes
    to callers outside PCI scope, and acquirers echo requests in their errors. Run it on
    the masked answer: withholding part of a spaced PAN first would leave the rest for
    the PAN detector to miss.
    `guesses` (`caller_guesses`) are withheld alike, wherever a detail was sent: an
    expiry's layouts first, the caller's among them, then the rest, so that a guess
    that is the card's comes back as one that is not (withheld as digit runs first,
    `07/31` would be `[withheld]/[withheld]` for a guess and `[withheld]` for the card)."""
    patterns = sent_patterns(sent, guesses)
    if not patterns:
        return value

    def text(item: str) -> str:
        # Without its NULs, as a text answer is (`vault.relay_client`): UTF-16 text copied
        # into a JSON string put one between each character, and the patterns match
        # whole runs, so the code and the name went back to the caller (the relay
        # review's residual; tests/vault/test_relay_answer_encoding_attacks.py).
        item = without_written(item.replace("\x00", ""), patterns, WITHHELD_DETAIL)
        return WITHHELD_DETAIL if escapes_hold(item, patterns) else item

    def walk(node: Any) -> Any:
        # Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH.
        if isinstance(node, str):
            return text(node)
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                key = text(str(k))
                while key in out:  # two members withheld to one name: keep both
                    key += "'"
                out[key] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, int | float) and not isinstance(node, bool):
            shown = text(str(node))
            if shown != str(node):
                return shown
        return node

    return walk(value)


# A sent card's shape (`_shown_shapes`): its pattern, its length, whether it passes Luhn.
_Shape = tuple[re.Pattern[str], int, bool]

# What may be a piece of a card number among an object's values: up to this many
# digits (a card has 13-19), spaces and hyphens between groups taken out.
_MAX_PIECE_DIGITS: Final = 18
_GROUP_SEPARATORS: Final = re.compile(r"[ -]")


def withhold_split_pans(value: Any, pans: Sequence[str]) -> Any:
    """`value` (an upstream's answer) with a PAN the vault sent withheld where the
    answer splits it over the values of one object (``{"bin": "555555", "rest":
    "5555554444"}``): in each object, the values that are short runs of digits (strings,
    their spaces and hyphens taken out, or numbers) are joined in member order, and
    every one that makes up part of an occurrence of a PAN in `pans`, or of any number
    that looks like one as far as its masked reveal shows (`_shown_shapes`), becomes
    `WITHHELD_DETAIL`. `mask_pan_values` joins the items of a list, not the values of
    an object: an object's amount, currency, NSU and authorization code often make 13
    or more digits together, so only the PANs the vault knows it sent are looked for.
    Run it on the masked answer (a whole PAN is masked there already)."""
    wanted = _shown_shapes(pans)
    if not wanted:
        return value

    def walk(node: Any) -> Any:
        # Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH.
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(item) for key, item in node.items()}
        pieces = [(key, digits) for key, item in out.items() if (digits := _piece(item))]
        joined = "".join(digits for _, digits in pieces)
        for key in _covering(pieces, joined, wanted):
            out[key] = WITHHELD_DETAIL
        return out

    return walk(value)


def _piece(value: Any) -> str | None:
    """The ASCII digits of a value that may be a piece of a card number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        text = str(value)
    elif isinstance(value, str) and len(value) <= 2 * _MAX_PIECE_DIGITS:
        text = ascii_digits(_GROUP_SEPARATORS.sub("", value))
    else:
        return None
    fits = 0 < len(text) <= _MAX_PIECE_DIGITS and text.isascii() and text.isdigit()
    return text if fits else None


def _covering(pieces: list[tuple[Any, str]], joined: str, pans: list[_Shape]) -> set[Any]:
    """The keys of the `pieces` (key, digits; `joined` is their digits in order) that
    make up part of an occurrence of one of `pans` (`_shown_shapes`) spread over two or
    more of them."""
    hit: set[Any] = set()
    for start, end in _occurrences(joined, pans):
        offset, covering = 0, []
        for key, digits in pieces:
            if offset < end and offset + len(digits) > start:
                covering.append(key)
            offset += len(digits)
        if len(covering) > 1:
            hit.update(covering)
    return hit


def _shown_shapes(pans: Sequence[str]) -> list[_Shape]:
    """For each PAN sent, a pattern of the digit strings that look like it as far as
    its masked reveal shows (its length, leading digits and last four: what the caller
    may know), its length, and whether it passes Luhn (a card of a range the policy
    exempts from Luhn does not, and its shape is then looked for without the check:
    atk49b, such a card in base64, split or in a list went back whole). The withholding
    looks for these, not for the PAN: an answer that changed only when a text was the
    card would tell a caller who wrote guesses into the fields an acquirer echoes which
    guess was the card (review 29b)."""
    shapes = []
    for pan in {pan for pan in pans if pan}:
        lead = masked_leading(len(pan))
        hidden = len(pan) - lead - MASK_TRAILING
        shown = rf"{re.escape(pan[:lead])}[0-9]{{{hidden}}}{re.escape(pan[-MASK_TRAILING:])}"
        # Overlapping starts.
        shapes.append((re.compile(f"(?={shown})"), len(pan), luhn_valid(pan)))
    return shapes


def _occurrences(digits: str, shapes: list[_Shape]) -> Iterator[tuple[int, int]]:
    """Where in `digits` a string of one of `shapes` starts and ends, Luhn-valid where
    the card sent is. Luhn: a guess worth writing is a card, and an acquirer's answer
    that lays out the card's BIN, a six-digit code and its last four in a row (a layout
    of what it charged) then keeps them nine times in ten. A card that fails Luhn (a
    `luhn_exempt` range) never passes it, so its shape is looked for without it; still
    blind to the hidden digits, so no guess is told apart."""
    for pattern, length, luhn in shapes:
        for match in pattern.finditer(digits):
            start = match.start()
            if not luhn or luhn_valid(digits[start : start + length]):
                yield start, start + length


# `_digits_of` for Latin-1 text, in C: its digits, and its superscripts one to three.
_LATIN1_DIGITS: Final = bytes.maketrans(b"\xb9\xb2\xb3", b"123")
_NOT_LATIN1_DIGIT: Final = bytes(b for b in range(256) if b not in b"0123456789\xb9\xb2\xb3")


_NOT_DIGIT: Final = re.compile(r"[^0-9]+")
_PERCENT_STAR: Final = re.compile(r"%2[Aa]")


def withhold_echoed_pans(value: Any, pans: Sequence[str], *, decoded: bool = True) -> Any:
    """`value` (an upstream's answer, masked) with an echo of a PAN in `pans` (the numbers the
    vault sent) withheld in whatever shape the PAN detector does not know (review 29b): a
    text (a value, a key, a number) whose digits read a sent PAN in order, as it is or once
    decoded (percent, HTML entities, JSON escapes, base64 and hex words, compressed streams,
    layers of these: `vault._relay_echo`), becomes `WITHHELD_DETAIL` whole, and so does one
    whose decoding passes its bound; so does every text of a sent PAN spread over several,
    its digits read in document order (keys and values, at any depth). Every character with
    a digit value counts (superscripts and circled digits too), every other character is
    skipped: groups spread by any separator, letters or tags read as the number. What is
    looked for is any number that looks like a sent PAN as far as its masked reveal shows
    (`_shown_shapes`: the answer must not tell a guess the caller had echoed from the card),
    never other cards, so the amounts and codes of an answer are not joined into a card by
    chance. Without `decoded`, texts are read as written only (the relay has read their
    decodings before the masking: `withhold_encoded_pans`)."""
    wanted = _shown_shapes(pans)
    if not wanted:
        return value

    def found(shape: str) -> bool:
        return next(_occurrences(_digits_of(shape), wanted), None) is not None

    answer = AnswerBound(_texts_length(value))

    def echoes(text: str) -> bool:
        return read_as(text, found, answer=answer) if decoded else found(text)

    alone = _replace_texts(value, lambda _index, text: WITHHELD_DETAIL if echoes(text) else None)
    # A sent PAN spread over several texts: their digits, joined in document order.
    spans: list[tuple[int, int]] = []
    joined: list[str] = []
    offset = 0

    def note(index: int, text: str) -> None:
        nonlocal offset
        digits = _digits_of(text)
        spans.append((offset, offset + len(digits)))
        joined.append(digits)
        offset += len(digits)

    _replace_texts(alone, note)
    everything = "".join(joined)
    spread: set[int] = set()
    for start, end in _occurrences(everything, wanted):
        over = [i for i, (s, e) in enumerate(spans) if s < e and s < end and e > start]
        if len(over) > 1:
            spread.update(over)
    if not spread:
        return alone
    return _replace_texts(alone, lambda index, _text: WITHHELD_DETAIL if index in spread else None)


def withhold_encoded_pans(
    value: Any,
    pans: Sequence[str],
    sent: Sequence[str] = (),
    guesses: CallerGuesses | None = None,
) -> Any:
    """`value` (an upstream's answer, before the masking) with every text that reads a
    PAN in `pans` only once decoded (`vault._relay_echo`), or whose decoding passes its
    bound, replaced by `WITHHELD_DETAIL`. Review 37: run on the masked answer only, the
    check decoded a hex dump of the request after the PAN detector had starred the digit
    runs it took for cards, and read nothing. A text whose digits read the PAN as
    written is left to the masking and `withhold_echoed_pans`, as before. So is a text
    that holds a detail in `sent` or a guess (`withhold_sent`'s) once a word of it is
    decoded (a run of digits as `DECODED_RUN` reads it), or once its escapes are undone
    after its details as written are taken out (read here too, as the masking may star
    an escaped code's digits): session 38, the card object echoed without its number in
    base64 gave the caller the code, the name and the expiry. Session 40: an array's
    items are read joined too (`vault._relay_dumps.joined_lists`: base64 lines, bytes
    in decimal, digit words, one an item), and every text and number of an array that
    reads a PAN or a detail so is withheld."""
    wanted = _shown_shapes(pans)
    written = sent_patterns(sent, guesses)
    decoded = decoded_details(sent, guesses)
    if not wanted and not written:
        return value

    answer = AnswerBound(_texts_length(value))  # one bound for the answer (review 39b)
    # Session 40: an array's items read joined too (base64 lines, one number or digit
    # word an item), within the same bound: the worst case stays what it was, and
    # texts read once a hostile answer's arrays spent it are withheld whole.
    lists = list(joined_lists(value))

    def holds_detail(shape: str) -> bool:
        if decoded is None:
            return False
        shape = shape.replace("\x00", "")
        return decoded.search(shape) or decoded.search(_as_utf8(shape))

    def reads_encoded(text: str) -> bool:
        plain = _digits_of(text)  # digits as written: the masking's, as before

        def found(shape: str) -> bool:
            digits = _digits_of(shape)
            return digits != plain and next(_occurrences(digits, wanted), None) is not None

        return read_as(text, found, decoded=holds_detail if decoded else None, answer=answer)

    def encoded(_index: int, text: str) -> str | None:
        if reads_encoded(text):
            return WITHHELD_DETAIL
        as_written = without_written(text.replace("\x00", ""), written, WITHHELD_DETAIL)
        return WITHHELD_DETAIL if written and escapes_hold(as_written, written) else None

    spread = {id(items) for items, texts in lists if any(map(reads_encoded, texts))}
    return _replace_texts(withhold_lists(value, spread, WITHHELD_DETAIL), encoded)


def _as_utf8(shape: str) -> str:
    """`shape` (decoded bytes read as Latin-1) read as UTF-8 when it is UTF-8 text past
    ASCII, else empty. Review 39b: a cardholder name holding a letter past ASCII
    (``João``) echoed in base64 or hex read ``JoÃ£o`` and was never found; noise that is
    not UTF-8 is not read again (a code's digits must not be joined across its bytes)."""
    if shape.isascii() or max(shape) > "\xff":
        return ""
    try:
        return shape.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _texts_length(value: Any) -> int:
    """The length of every text of `value` (`_replace_texts`'), together."""
    total = [0]

    def add(_index: int, text: str) -> None:
        total[0] += len(text)

    _replace_texts(value, add)
    return total[0]


def _replace_texts(value: Any, replace: Callable[[int, str], str | None]) -> Any:
    """`value` with each text (string, key, number as written) given to
    `replace(index, text)` in document order, and replaced by what it answers (None:
    kept). Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH."""
    counter = [0]

    def visit(text: str) -> str | None:
        index = counter[0]
        counter[0] += 1
        return replace(index, text)

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            shown = visit(node)
            return node if shown is None else shown
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            for k, v in node.items():
                shown = visit(str(k))
                key = k if shown is None else shown
                while key in out:  # two members withheld to one name: keep both
                    key = f"{key}'"
                out[key] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, int | float) and not isinstance(node, bool):
            shown = visit(str(node))
            return node if shown is None else shown
        return node

    return walk(value)


def _digits_of(text: str) -> str:
    """The digits of `text` in order, each character with a digit value as its ASCII
    digit (fullwidth, Arabic-Indic, superscript, circled), everything else left out,
    and a percent-escaped star (``%2A``) read as the star it is. Session 41: a masked
    card in a form body or a URL (``412345%2A%2A%2A%2A%2A%2A1234``) read as its BIN,
    ``222222`` and its last four, a card shape that is Luhn-valid for one card in ten:
    every such answer to a relay of that card was withheld whole (0.85% of genuine
    answers measured, tests/vault/test_relay41_false_positives.py)."""
    if "%2" in text:
        text = _PERCENT_STAR.sub("*", text)
    if text.isascii() or max(text) <= "\xff":
        # Latin-1 (every decoded word is read so): its only other digits are the
        # superscripts, and a lookup per character took seconds for a 1 MiB word.
        data = text.encode("latin-1").translate(_LATIN1_DIGITS, _NOT_LATIN1_DIGIT)
        return data.decode("ascii")
    return _NOT_DIGIT.sub("", text.translate(digit_values()))


def mask_strings(value: Any) -> Any:
    """`value` (a JSON answer) with every PAN-like value masked, in whatever
    representation (`cofre.redaction.mask_pan_values`)."""
    return mask_pan_values(value)
