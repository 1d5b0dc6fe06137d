"""Session 38: the shopper's card-fields frame reloaded (the shopper's own reload of the
frame, or the browser's: a frame moved in the page, a crashed renderer) in real headless
Chromium, on cap37's stage. The session's secret reaches the fields once, by
``postMessage`` from `capture.js`, which drops it as it hands it over: a reloaded frame
never has it again. Before session 38 Pay then did nothing at all (the fields ignored a
submit without a secret): no error for the shopper, no ``onError`` for the shop, the
checkout stuck. Now the fields say so and tell the shop's page ``fields_reloaded``, and
the shop's page starts a new session; the secret still goes to the frame once.
"""

from __future__ import annotations

import json
import re
import ssl

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from api.capture import CAPTURE_SCRIPT, asset, sri_hash
from tests.adapters.test_cap37_hosted_capture_browser import (
    _checkout,
    _result,
    _type_card,
    stage,
)
from tests.adapters.test_capture_end_to_end import STEP_TIMEOUT
from tests.adapters.test_web36_hosted_fields_browser import (
    CARD,
    Site,
    Stage,
    _session,
    browser,
)
from vault.capture import CaptureSession

__all__ = ["browser", "stage"]  # cap37's and web36's fixtures

# The shop's page as docs/capture.md advises it: on `fields_reloaded` it asks its
# backend for a new session (here the shop's `/next-session`) and mounts the fields
# again.
REMOUNT = """\
(function () {
  "use strict";
  var page = document.documentElement;
  var fields = null;
  function start(session, secret) {
    fields = Cofre.mount({
      container: "#card", session: session, secret: secret,
      onToken: function (card) { page.setAttribute("data-result", "token " + card.masked_pan); },
      onError: function (p) {
        page.setAttribute("data-errors", (page.getAttribute("data-errors") || "") + p.code + " ");
        if (p.code !== "fields_reloaded") { return; }
        fetch("/next-session").then(function (r) { return r.json(); }).then(function (s) {
          fields.destroy();
          start(s.session_id, s.client_secret);
          page.setAttribute("data-remounted", "yes");
        });
      }
    });
  }
  start(page.getAttribute("data-session"), page.getAttribute("data-secret"));
  document.getElementById("pay").addEventListener("click", function () { fields.submit(); });
}());
"""


def _reload_fields(driver: webdriver.Chrome) -> None:
    """Reload the fields' frame as the shopper's browser would, and wait until the
    reloaded fields have rendered and said `ready`; leaves the driver in the frame."""
    frame = WebDriverWait(driver, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
    )
    driver.switch_to.frame(frame)
    WebDriverWait(driver, STEP_TIMEOUT).until(lambda d: d.find_element(By.ID, "number"))
    driver.execute_script("window.__before_reload = 1; location.reload();")
    WebDriverWait(driver, STEP_TIMEOUT).until(
        lambda d: d.execute_script(
            "return window.__before_reload === undefined && document.readyState === 'complete'"
            " && !!document.getElementById('number')"
        )
    )


def _captures_sent(driver: webdriver.Chrome) -> int:
    """How many requests to the capture endpoint the current frame made."""
    return int(
        driver.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(function (e) { return e.name.indexOf('/v1/capture/') >= 0; }).length"
        )
    )


def _unused(stage: Stage, session: CaptureSession) -> bool:
    """Whether `session` is still live with its capture left."""
    service = stage.vault.runtime.service
    found = service.hosted_fields_session(session.session_id, allow_http_localhost=True)
    return found is not None


def test_pay_in_a_reloaded_frame_fails_visibly_and_sends_nothing(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Medium (fixed, session 38): the frame reloaded, the shopper types the card and
    presses Pay: nothing happened, no error anywhere. Now the fields' status line says
    the form must be started again, the card typed is emptied from the dead form, and
    the shop's ``onError`` receives ``fields_reloaded``. The reloaded frame got no
    secret and posted nothing: the session is untouched."""
    session = _session(stage)
    browser.get(_checkout(stage, session))
    _reload_fields(browser)
    for field, value in {"number": CARD, "expiry": "12/30"}.items():
        browser.find_element(By.ID, field).send_keys(value)
    browser.switch_to.default_content()
    browser.find_element(By.ID, "pay").click()
    assert _result(browser) == "error fields_reloaded"
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "#card iframe"))
    status = browser.find_element(By.ID, "status").text
    assert "again" in status
    assert browser.find_element(By.ID, "number").get_attribute("value") == ""
    assert _captures_sent(browser) == 0
    browser.switch_to.default_content()
    assert _unused(stage, session)


def test_the_shops_page_starts_a_new_session_and_the_shopper_pays(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """The recovery docs/capture.md describes: ``onError`` with ``fields_reloaded``
    fetches a new session from the shop's backend and mounts the fields again; the
    card typed there is captured under the new session."""
    first, second = _session(stage), _session(stage)
    integrity = sri_hash(asset(CAPTURE_SCRIPT))
    stage.shop.pages["/remount.js"] = ("text/javascript", REMOUNT.encode())
    stage.shop.pages["/next-session"] = (
        "application/json",
        json.dumps({"session_id": second.session_id, "client_secret": second.secret}).encode(),
    )
    stage.shop.pages["/remount"] = (
        "text/html; charset=utf-8",
        f"""<!doctype html><html data-session="{first.session_id}"
 data-secret="{first.secret}"><body><div id="card"></div>
<button id="pay" type="button">Pay</button>
<script src="{stage.vault.capture_url}/v1/capture.js" integrity="{integrity}"
 crossorigin="anonymous"></script>
<script src="/remount.js"></script></body></html>""".encode(),
    )
    browser.get(stage.shop.url + "/remount")
    _reload_fields(browser)
    browser.switch_to.default_content()
    browser.find_element(By.ID, "pay").click()
    WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("data-remounted") == "yes"
    )
    _type_card(browser, {"number": CARD, "expiry": "12/30"})
    browser.find_element(By.ID, "pay").click()
    assert _result(browser) == "token 411111******1111"
    errors = browser.find_element(By.TAG_NAME, "html").get_attribute("data-errors")
    assert errors == "fields_reloaded "
    # The first session was never used: its secret reached no reloaded frame.
    assert _unused(stage, first)
    assert not _unused(stage, second)


# The previous version's script as a browser or CDN cached it: the bare path, cacheable.
PREVIOUS = asset("hosted-fields.js") + b"\n// the previous version\n"
_NAMED = re.compile(r'/v1/hosted-fields\.js(\?v=[0-9a-f]+)?" integrity="[^"]+"')


def _edge(stage: Stage, upgraded: list[bool]) -> Site:
    """The capture origin as a browser meets it across an upgrade: until `upgraded[0]`
    the previous version (its page names the script by the bare path, which serves
    `PREVIOUS` cacheable), then this version, passed through."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(stage.vault.pki.server_cert), str(stage.vault.pki.server_key))
    hop = {"content-length", "connection", "transfer-encoding", "keep-alive", "date"}

    def forward(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if not upgraded[0] and path == "/v1/hosted-fields.js":
            cacheable = [
                ("content-type", "text/javascript"),
                ("cache-control", "public, max-age=300"),
            ]
            return 200, cacheable, PREVIOUS
        with stage.vault.capture_client() as client:
            answer = client.get(path)
        body = answer.content
        if not upgraded[0] and path.startswith("/v1/hosted-fields/"):
            named = f'/v1/hosted-fields.js" integrity="{sri_hash(PREVIOUS)}"'
            body = _NAMED.sub(named, body.decode()).encode()
        return answer.status_code, [(k, v) for k, v in answer.headers.items() if k not in hop], body

    return Site("localhost", tls=tls, forward=forward)


def _script_ran(driver: webdriver.Chrome) -> bool:
    """Whether the fields' script ran: it hides the code input of a session that
    forbids one (web36's sessions do)."""
    WebDriverWait(driver, STEP_TIMEOUT).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    return bool(
        driver.execute_script(
            "return document.getElementById('code-field').classList.contains('hidden')"
        )
    )


def test_fields_loaded_after_an_upgrade_run_the_new_script_not_a_cached_one(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Medium (fixed, session 38; found changing the fields' script for the reload
    above). The fields' page named its script by the bare path, served cacheable for
    five minutes, and with its hash (review web36). After an upgrade that changed the
    script, a browser (or CDN) that had loaded the fields in the five minutes before
    took its cached previous copy, which the new page's hash refuses: the fields had no
    script, Pay did nothing, for every such shopper until the cache expired (checked by
    hand first: Chromium does not fetch again on a hash mismatch). The page now names
    the script and style with their version (``?v=``), a new URL to every cache."""
    upgraded = [False]
    edge = _edge(stage, upgraded)
    edge.start()
    try:
        browser.get(f"{edge.url}/v1/hosted-fields/{_session(stage).session_id}")
        assert _script_ran(browser)
        upgraded[0] = True
        browser.get(f"{edge.url}/v1/hosted-fields/{_session(stage).session_id}")
        assert _script_ran(browser)
    finally:
        edge.stop()


def test_a_copy_asked_for_by_another_version_is_not_cached(stage: Stage) -> None:
    """In a rollout a page of one version may reach a pod of the other for its script:
    that copy is answered ``no-store``, so no browser or CDN keeps it under the URL of
    the version it is not; the right version and the bare path are cacheable."""
    script = asset("hosted-fields.js")
    with stage.vault.capture_client() as client:
        page = client.get(f"/v1/hosted-fields/{_session(stage).session_id}").text
        [named] = re.findall(r'src="(/v1/hosted-fields\.js\?v=[0-9a-f]+)"', page)
        right, other = client.get(named), client.get("/v1/hosted-fields.js?v=0123456789abcdef")
        bare = client.get("/v1/hosted-fields.js")
    assert right.content == other.content == bare.content == script
    assert right.headers["cache-control"] == bare.headers["cache-control"] == "public, max-age=300"
    assert other.headers["cache-control"] == "no-store"
