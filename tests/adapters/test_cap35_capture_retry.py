"""Session 35: the hosted fields send a capture again when the vault refused it before
doing anything (503 ``capture_busy``: the capture listener's share of the database
pool in use, `api._capture_slots`), after the ``Retry-After`` it names, a bounded number
of times, the card kept in the fields and the shopper told; before, the first such
refusal was the checkout's end (``onError``), so a spike of a second lost sales.

In a real headless Chromium (the checkout of test_capture_end_to_end: the test shop,
the vault's relay, the fake acquirer). The share is the listener's own `CaptureSlots`,
filled by the test holding every place, as captures in flight would, and given back
from inside the refusal that the test waits for (`_HeldShare`): which attempt succeeds
never depends on how fast the test or the browser runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from selenium import webdriver
from selenium.webdriver.common.by import By

from api._capture_slots import CaptureSlots
from api.capture import CaptureState, build_capture_server, create_capture_app
from api.errors import CaptureBusy
from api.server import BackgroundServer
from cofre.settings import CaptureSettings
from policies.models import RateLimit
from tests.adapters.test_capture_end_to_end import (
    CARD,
    CODE,
    EXPIRY,
    Checkout,
    _result,
    _type_card,
    browser,
    checkout,
    code_provider,
)
from tests.support.postgres import free_port

__all__ = ["browser", "checkout", "code_provider"]  # the fixtures, imported for the tests

# The hosted fields' bound (api/capture_assets/hosted-fields.js): tries in all.
RETRY_ATTEMPTS = 4


class _HeldShare(CaptureSlots):
    """A capture listener's share of the pool that the test fills (`fill`) and that
    gives itself back once `free_after` requests found it full (None: never; `free`)."""

    def __init__(self, places: int) -> None:
        super().__init__(places)
        self.refused = 0
        self._held = ExitStack()
        self._free_after: int | None = None
        self._lock = threading.Lock()

    def fill(self, free_after: int | None) -> None:
        for _ in range(self.places):
            self._held.enter_context(super().place())
        self.refused = 0
        self._free_after = free_after

    def free(self) -> None:
        self._held.close()

    @contextmanager
    def place(self) -> Iterator[None]:
        with ExitStack() as taken:
            try:
                taken.enter_context(super().place())
            except CaptureBusy:
                with self._lock:
                    self.refused += 1
                    if self.refused == self._free_after:
                        self.free()  # before this refusal is even answered
                raise
            yield


@contextmanager
def _listener_with(checkout: Checkout, share: _HeldShare) -> Iterator[str]:
    """A capture listener of the checkout's vault whose share of the pool is `share`,
    the shop's page pointed at it for the block; yields its origin."""
    vault = checkout.vault
    settings = CaptureSettings(port=free_port(), allow_http_localhost=True)
    origin = settings.origin()
    app = create_capture_app(
        CaptureState(
            service=vault.runtime.service,
            public_origin=origin,
            per_session=RateLimit(
                per_second=settings.session_per_second, burst=settings.session_burst
            ),
            per_address=RateLimit(
                per_second=settings.address_per_second, burst=settings.address_burst
            ),
            allow_http_localhost=True,
            slots=share,
        )
    )
    assert settings.port is not None
    server = BackgroundServer(
        build_capture_server(
            app, "127.0.0.1", settings.port, cert=vault.pki.server_cert, key=vault.pki.server_key
        )
    )
    server.start()
    shop, before = checkout.shop, checkout.shop.capture_origin
    shop.capture_origin = origin
    try:
        yield origin
    finally:
        shop.capture_origin = before
        share.free()
        server.stop()


def _fields_status(driver: webdriver.Chrome) -> tuple[str, list[str]]:
    """The fields' status line, and which inputs hold something (names only)."""
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#card iframe"))
    try:
        status = str(driver.find_element(By.ID, "status").text)
        held = [
            field
            for field in ("number", "expiry", "security_code")
            if driver.find_element(By.ID, field).get_attribute("value")
        ]
    finally:
        driver.switch_to.default_content()
    return status, held


# Notes every text the fields' status line shows (WebDriver's script runs beside the
# page's, outside its CSP): what the shopper was told, however briefly.
_WATCH_STATUS = """
window.cofreStatuses = [];
var line = document.getElementById("status");
new MutationObserver(function () { window.cofreStatuses.push(line.textContent); })
  .observe(line, {childList: true, characterData: true, subtree: true});
"""


def _in_fields(driver: webdriver.Chrome, script: str) -> object:
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#card iframe"))
    try:
        return driver.execute_script(script)
    finally:
        driver.switch_to.default_content()


def test_finding_a_capture_refused_busy_is_sent_again_and_the_checkout_goes_through(
    checkout: Checkout, browser: webdriver.Chrome
) -> None:
    """Medium (fixed, session 35): a checkout lost to a momentary spike. The fields
    answered the shop's page ``onError`` at the first 503 ``capture_busy``, which the
    vault sends before it does anything and with ``Retry-After: 1``. Now they wait
    that second and send the card again: the shopper pays once, the shop gets one
    token, the acquirer the card once."""
    share = _HeldShare(2)
    with _listener_with(checkout, share):
        received = len(checkout.acquirer.received)
        tokens = len(checkout.shop.tokens)
        browser.get(checkout.shop.url + "/")
        _type_card(browser, {"number": CARD, "expiry": EXPIRY, "security_code": CODE})
        share.fill(free_after=1)
        _in_fields(browser, _WATCH_STATUS)
        browser.find_element(By.ID, "pay").click()
        assert _result(browser, ("approved", "declined", "error")) == "approved A1B2C3"
        told = _in_fields(browser, "return window.cofreStatuses;")
    assert share.refused == 1
    assert isinstance(told, list)
    assert f"The card service is busy: trying again in 1 s (1 of {RETRY_ATTEMPTS - 1})" in told
    assert len(checkout.shop.tokens) == tokens + 1
    sent = checkout.acquirer.received[received:]
    assert [body["card"]["number"] for body in sent] == [CARD]


def test_the_fields_give_up_after_their_bound_and_keep_the_card(
    checkout: Checkout, browser: webdriver.Chrome
) -> None:
    """The retry is bounded: with the share full for good, the fields try
    `RETRY_ATTEMPTS` times in all (waiting each ``Retry-After``), then hand the shop's
    page the refusal; the card stays in the fields for the shopper to press Pay again,
    and nothing was captured."""
    share = _HeldShare(2)
    with _listener_with(checkout, share):
        tokens = len(checkout.shop.tokens)
        browser.get(checkout.shop.url + "/")
        _type_card(browser, {"number": CARD, "expiry": EXPIRY, "security_code": CODE})
        share.fill(free_after=None)
        _in_fields(browser, _WATCH_STATUS)
        browser.find_element(By.ID, "pay").click()
        assert _result(browser, ("approved", "declined", "error")) == "error capture_busy"
        status, held = _fields_status(browser)
        told = _in_fields(browser, "return window.cofreStatuses;")
    # The shopper was told at each wait (the fields' own status line).
    assert isinstance(told, list)
    waits = [text for text in told if text.startswith("The card service is busy")]
    assert waits == [
        f"The card service is busy: trying again in 1 s ({n} of {RETRY_ATTEMPTS - 1})"
        for n in range(1, RETRY_ATTEMPTS)
    ], told
    assert share.refused == RETRY_ATTEMPTS
    assert held == ["number", "expiry", "security_code"]
    assert status == "The capture listener is busy; retry shortly"
    assert len(checkout.shop.tokens) == tokens
