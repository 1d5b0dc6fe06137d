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

from collections.abc import Iterator

import pytest
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
    browser,
)
from tests.api.conftest import running_vault
from tests.support.postgres import free_port
from vault.capture import CaptureSession

__all__ = ["browser"]  # web36's fixture, over this module's `stage`

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


# A page of the attacker's origin inside the shop's checkout (an ad, a chat widget):
# it speaks for the fields to the shop's page, for the shop's page to the fields, and
# tries to navigate the fields' frame to its look-alike, again and again while the
# shopper types. `__ad` in its own window records what it managed.
AD = """<!doctype html><html><body><script>
var tries = 0;
function others() {
  var all = [];
  for (var i = 0; i < parent.frames.length; i++) {
    if (parent.frames[i] !== window) { all.push(parent.frames[i]); }
  }
  return all;
}
var timer = setInterval(function () {
  tries += 1;
  parent.postMessage({cofre: 1, type: "token", token: "4111110000001111", format: "x",
                      masked_pan: "forged", expiry: null}, "*");
  parent.postMessage({cofre: 1, type: "ready"}, "*");
  others().forEach(function (w) {
    w.postMessage({cofre: 1, type: "init", secret: "cofre_cs_forged", style: {}}, "*");
    try { w.location = "EVIL/fake-fields"; } catch (e) { tries += 0; }
  });
  if (tries > 40) { clearInterval(timer); }
}, 100);
</script></body></html>"""


def test_a_frame_of_another_origin_in_the_checkout_cannot_speak_for_either_side(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: a frame of another origin in the shop's page (which sends no CSP here,
    the worst case) posts a forged token to the page, a forged ``ready`` and
    ``init`` (its own secret) to the fields, and navigates the fields' frame to its
    look-alike, ten times a second while the shopper types: the page takes messages
    only from the frame it mounted, the fields only from their parent of the session's
    origin, and Chromium lets no frame navigate another origin's frame it is not an
    ancestor of. The shopper's capture goes through with the session's own secret."""
    session = _session(stage)
    stage.evil.pages["/ad"] = _html(AD.replace("EVIL", stage.evil.url))
    url = _checkout(stage, session, f'<iframe id="ad" src="{stage.evil.url}/ad"></iframe>')
    browser.get(url)
    _type_card(browser, {"number": CARD, "expiry": "12/30"})
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-result") is None
    browser.find_element(By.ID, "pay").click()
    assert _result(browser) == "token 411111******1111"
    assert _fields_inside(browser, "#card iframe")
    assert "/fake-fields" not in stage.evil.seen


def test_the_fields_without_their_script_send_the_card_nowhere(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: when the fields' script does not run (here a CDN's tampered copy, which
    the browser refuses by its hash), their form would go by GET to the page's own
    URL, the card in its query: in the address, the history, and the logs of every
    proxy on the way. Enter submits nothing (four fields and no submit button: no
    implicit submission), and a submission made any other way (here the form's own
    ``submit()``, as an extension or a browser feature might) is refused by the page's
    CSP ``form-action 'none'`` (without it, this test fails: the card reaches the CDN)."""
    session = _session(stage)
    page = f"{stage.cdn.url}/v1/hosted-fields/{session.session_id}"
    browser.get(page)
    WebDriverWait(browser, STEP_TIMEOUT).until(lambda d: d.find_elements(By.ID, "number"))
    history = browser.execute_script("return history.length")
    browser.find_element(By.ID, "number").send_keys(CARD)
    browser.find_element(By.ID, "expiry").send_keys("1230" + Keys.ENTER)
    browser.find_element(By.ID, "name").send_keys("Ana" + Keys.ENTER)
    browser.execute_script("document.getElementById('card').submit()")
    # A refused submission leaves the page as it was; one let through navigates.
    WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    # Booleans: a failure here must not print the URL (it would hold the card).
    navigated = browser.current_url != page
    assert not navigated
    assert browser.execute_script("return history.length") == history
    assert not [path for path in stage.cdn.seen if CARD in path or "number=" in path]


def _no_store(site: Site) -> None:
    """Serve `site`'s pages with ``Cache-Control: no-store``, as checkouts often are
    (Chromium then keeps the page out of its back/forward cache)."""

    def forward(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        kind, body = site.pages.get(path, ("text/plain", b"not found"))
        headers = [("content-type", kind), ("cache-control", "no-store")]
        return (200 if path in site.pages else 404), headers, body

    site.forward = forward


def test_a_card_typed_and_left_is_not_restored_by_back_on_a_no_store_checkout(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: a checkout served ``no-store`` is kept out of the back/forward cache, so
    Back loads it again; Chromium could restore what the fields' form held from the
    session history (it restores form state on history loads). It restores nothing
    into the fields' frame, which capture.js creates anew (checked by hand with the
    fields' ``pagehide`` clearing taken out: still nothing), and the fields empty
    their inputs on ``pagehide`` besides (review 34)."""
    session = _session(stage)
    url = _checkout(stage, session)
    stage.shop.pages["/away"] = _html("<p>elsewhere</p>")
    _no_store(stage.shop)
    try:
        browser.get(url)
        typed = {"number": CARD, "expiry": "12/30", "name": "Ana Souza"}
        _type_card(browser, typed)
        browser.get(stage.shop.url + "/away")
        browser.back()
        frame = WebDriverWait(browser, STEP_TIMEOUT).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
        )
        browser.switch_to.frame(frame)
        WebDriverWait(browser, STEP_TIMEOUT).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        left = [f for f in typed if browser.find_element(By.ID, f).get_attribute("value")]
        browser.switch_to.default_content()
    finally:
        stage.shop.forward = None
    assert left == []
