"""Session 37: the shopper's side of hosted capture attacked in real headless Chromium
(Debian's, through chromium-driver, as tests/adapters/test_web36_hosted_fields_browser.py),
where the browser is what enforces the defence. The stage is web36's: a shop and an
attacker's site on loopback of two origins, the capture listener over real TLS; here
the listener's per-session limit is tight (3 tries, one more every 100 s), so a test
never waits for a bucket to refill.

- someone who learnt a session's id (a CDN's or proxy's log of the fields' path) and
  nothing else tries wrong secrets while the shopper checks out;
- a page of the attacker's origin inside the shop's page (an ad, a widget) posts to
  the fields and to the shop's page as if it were the other, and tries to navigate
  the fields' frame to a look-alike;
- the fields' page without its script (a CDN's tampered copy, refused by its hash):
  Enter in a field would submit the form, the card in the URL and the history.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
import ssl
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from api.capture import CAPTURE_SCRIPT, asset, sri_hash
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.adapters.test_capture_end_to_end import STEP_TIMEOUT
from tests.adapters.test_web36_hosted_fields_browser import (
    CARD,
    Site,
    Stage,
    _cdn,
    _fields_inside,
    _html,
    _session,
    browser,  # noqa: F401 - the fixture, over this module's `stage`
)
from tests.api.conftest import running_vault
from tests.support.postgres import free_port
from vault.capture import CaptureSession

TIGHT = CaptureSettings(allow_http_localhost=True, session_per_second=0.01, session_burst=3)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider) -> Iterator[Stage]:
    shop = Site("localhost", port=free_port())
    evil = Site("127.0.0.1")
    capture = TIGHT.model_copy(update={"port": free_port()})
    with running_vault(
        tmp_path_factory.mktemp("cap37"), hsm_provider, capture=capture, capture_origins=(shop.url,)
    ) as vault:
        cdn = _cdn(vault)
        for site in (shop, evil, cdn):
            site.start()
        try:
            yield Stage(vault, shop, evil, cdn)
        finally:
            for site in (shop, evil, cdn):
                site.stop()


MOUNT = """\
(function () {
  "use strict";
  var page = document.documentElement;
  var fields = Cofre.mount({
    container: "#card",
    session: page.getAttribute("data-session"),
    secret: page.getAttribute("data-secret"),
    onToken: function (card) { page.setAttribute("data-result", "token " + card.masked_pan); },
    onError: function (p) { page.setAttribute("data-result", "error " + p.code); }
  });
  document.getElementById("pay").addEventListener("click", function () { fields.submit(); });
}());
"""


def _checkout(stage: Stage, session: CaptureSession, extra: str = "", path: str = "/") -> str:
    """The shop's checkout page for `session` at `path` (with `extra` markup after the
    fields); its URL."""
    integrity = sri_hash(asset(CAPTURE_SCRIPT))
    capture = stage.vault.capture_url
    stage.shop.pages["/mount.js"] = ("text/javascript", MOUNT.encode())
    stage.shop.pages[path] = (
        "text/html; charset=utf-8",
        f"""<!doctype html><html data-session="{session.session_id}"
 data-secret="{session.secret}"><body><div id="card"></div>
<button id="pay" type="button">Pay</button>{extra}
<script src="{capture}/v1/capture.js" integrity="{integrity}" crossorigin="anonymous"></script>
<script src="/mount.js"></script></body></html>""".encode(),
    )
    return stage.shop.url + path


def _type_card(driver: webdriver.Chrome, card: dict[str, str]) -> None:
    frame = WebDriverWait(driver, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
    )
    driver.switch_to.frame(frame)
    WebDriverWait(driver, STEP_TIMEOUT).until(lambda d: d.find_element(By.ID, "number"))
    for field, value in card.items():
        driver.find_element(By.ID, field).send_keys(value)
    driver.switch_to.default_content()


def _result(driver: webdriver.Chrome) -> str:
    return str(
        WebDriverWait(driver, STEP_TIMEOUT).until(
            lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("data-result")
        )
    )


def _guess(stage: Stage, session: CaptureSession, tries: int) -> list[int]:
    """What someone who knows only `session`'s id does: post wrong secrets."""
    with stage.vault.capture_client() as client:
        return [
            client.post(
                f"/v1/capture/{session.session_id}",
                json={"secret": f"cofre_cs_guess{n}", "number": CARD},
                headers={"origin": stage.shop.url},
            ).status_code
            for n in range(tries)
        ]


def test_a_leaked_session_id_cannot_block_the_shoppers_checkout(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Medium (fixed, session 37; the residual of review web36). The per-session limit
    was charged before the secret was compared, and refused the right secret once
    spent: someone who learnt only a session's id (from a CDN's or a proxy's log of the
    fields' path) spent it with wrong secrets, one more each time it refilled, and the
    shopper's capture was ``429 rate_limited`` for the session's life. The limit now
    counts wrong secrets only; the secret's holder has a bucket of its own."""
    session = _session(stage)
    # The guesses spend the wrong secrets' bucket, and are then refused (429).
    assert _guess(stage, session, 4) == [401, 401, 401, 429]
    browser.get(_checkout(stage, session))
    _type_card(browser, {"number": CARD, "expiry": "12/30"})
    browser.find_element(By.ID, "pay").click()
    assert _result(browser) == "token 411111******1111"
    # Guessing is still bounded: the next wrong secret is refused as before.
    assert _guess(stage, session, 1) == [429]
