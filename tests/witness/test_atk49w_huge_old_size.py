"""atk49w: an add-checkpoint body whose ``old`` size has more than 4,300 digits (Python's
limit on int() of a decimal string) raised a bare ValueError out of the request parser:
the witness answered 500 "internal error" and logged an ERROR with a traceback
(``add-checkpoint failed``) for each such request from any client, uncounted in its
metrics. tlog-witness says 400 for a malformed request."""

from __future__ import annotations

import pytest

from witness.core import parse_request
from witness.errors import RequestMalformed


def test_an_old_size_of_thousands_of_digits_is_a_malformed_request() -> None:
    body = b"old 9" + b"9" * 4999 + b"\n\nirrelevant\n"
    with pytest.raises(RequestMalformed):
        parse_request(body)
