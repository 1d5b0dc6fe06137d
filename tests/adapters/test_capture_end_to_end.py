"""The shopper's browser to the acquirer without the shop in PCI scope, in a real
headless Chromium: a test shop page on loopback embeds the vault's hosted card fields,
the test types a card into the iframe, the shop's backend receives a token only and
authorizes it through the Getnet adapter, the vault's relay puts the card in (number,
expiry, name, and the security code held once), and the fake acquirer receives it once;
a second authorization with the same token carries no code. The audit log shows each
step.

Chromium is Debian's, driven by Debian's chromium-driver through selenium (WebDriver):
no browser download, the same browser the evidence-report test renders with. The shop
is served over http://localhost (the capture setting `allow_http_localhost`, a
development allowance, lets a session name it); the capture listener is real TLS with
the dev CA's certificate, which Chromium trusts through
``--ignore-certificate-errors-spki-list`` (the SHA-256 of that certificate's public key
only, nothing else).

The leak scan covers the shop backend's requests and logs and the browser's console
(all written under this test's directory); the acquirer's journal, the one place a PAN
is meant to arrive, is in a directory the scan excludes by name (`ACQUIRER_SIDE`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from adapters.client import CofreClient
from adapters.services import GetnetRoutingAdapter, LedgerAdapter, PaymentsAdapter
from api.capture import CAPTURE_SCRIPT, asset, sri_hash
from api.pki import DevPKI, ensure_dev_pki
from cofre.settings import CaptureSettings
from hsm.keys import KeyHierarchy
from hsm.provider import HSMProvider, provider_from_settings
from tests.api.conftest import VaultServer, running_vault
from tests.support.chromium import offline_flags
from tests.support.codes import shows_code
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.leakguard import ACQUIRER_SIDE
from tests.support.leakscan import find_leaks
from tests.support.policies import TEST_IDENTITIES, getnet_card_route
from tests.support.postgres import free_port
from tests.support.shop import Shop
from tests.support.softhsm import SoftHSMToken, destroy_code_epochs

CARD = "5555555555554444"
CODE = "737"
EXPIRY = "11/31"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Upper bounds for the browser's steps; the test waits on the page's state, not on time.
STEP_TIMEOUT = 60


@dataclass
class Checkout:
    vault: VaultServer
    acquirer: FakeAcquirer
    shop: Shop
    tmp: Path


def _spki_hash(certificate: Path) -> str:
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _client(pki: DevPKI, url: str, name: str) -> CofreClient:
    return CofreClient(url, cert=pki.client_cert(name), key=pki.client_key(name), ca=pki.ca)


@pytest.fixture(scope="module")
def code_provider(softhsm_token: SoftHSMToken) -> Iterator[HSMProvider]:
    """The session's second token (as tests/adapters/test_getnet_card.py): the
    security-code epoch keys this vault makes never sit beside other test vaults' keys,
    and are destroyed when the module is done."""
    provider = provider_from_settings(
        softhsm_token.settings(token_label=softhsm_token.label + "-rot")
    )
    KeyHierarchy(provider).initialize()
    try:
        yield provider
    finally:
        destroy_code_epochs(provider)
        provider.close()


@pytest.fixture(scope="module")
def checkout(
    tmp_path_factory: pytest.TempPathFactory, code_provider: HSMProvider
) -> Iterator[Checkout]:
    tmp = tmp_path_factory.mktemp("capture-e2e")
    vault_dir = tmp / "vault"
    vault_dir.mkdir()
    pki = ensure_dev_pki(vault_dir / "pki", identities=TEST_IDENTITIES)
    acquirer = FakeAcquirer(
        cert=pki.server_cert,
        key=pki.server_key,
        journal=tmp / ACQUIRER_SIDE / "received.jsonl",
    )
    acquirer.start()
    routes = getnet_card_route(acquirer.url, pki.ca)
    capture = CaptureSettings(port=free_port(), allow_http_localhost=True)
    # The shop's page origin is in the policy: payments opens sessions for it alone.
    shop_port = free_port()
    origins = (f"http://localhost:{shop_port}",)
    with running_vault(
        vault_dir, code_provider, extra_policy=routes, capture=capture, capture_origins=origins
    ) as vault:
        assert vault.capture_url is not None
        with (
            _client(vault.pki, vault.url, "payments") as payments_client,
            _client(vault.pki, vault.url, "getnet-adapter") as getnet_client,
            _client(vault.pki, vault.url, "ledger") as ledger_client,
        ):
            payments = PaymentsAdapter(
                GetnetRoutingAdapter(getnet_client), LedgerAdapter(ledger_client), payments_client
            )
            shop = Shop(
                root=tmp / "shop",
                payments=payments,
                capture_origin=vault.capture_url,
                capture_script_integrity=sri_hash(asset(CAPTURE_SCRIPT)),
                port=shop_port,
            )
            shop.start()
            try:
                yield Checkout(vault, acquirer, shop, tmp)
            finally:
                shop.stop()
    acquirer.stop()


@pytest.fixture
def browser(checkout: Checkout) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "headless Chromium and chromium-driver are required: `make test` installs them",
            pytrace=False,
        )
    # The profile lives outside pytest's temp directory: Chromium's own files hold
    # 17-digit timestamps that pass Luhn by chance. It is searched for the card itself
    # before it is deleted (a browser that kept the typed card would fail here).
    profile = Path(tempfile.mkdtemp(prefix="cofre-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # The flags of the evidence-report test: off the network, out of the home directory.
    for flag in (
        *offline_flags(profile),
        # Trust exactly the capture listener's key (the dev CA is not in Chromium's store).
        f"--ignore-certificate-errors-spki-list={_spki_hash(checkout.vault.pki.server_cert)}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(STEP_TIMEOUT)
    try:
        yield driver
    finally:
        # The browser's console goes under the test's directory for the leak scan.
        console = driver.get_log("browser")
        with (checkout.tmp / "browser-console.jsonl").open("a") as out:
            out.writelines(json.dumps(entry) + "\n" for entry in console)
        driver.quit()
        kept = [
            str(path.relative_to(profile))
            for path in profile.rglob("*")
            if path.is_file() and not path.is_symlink() and CARD.encode() in path.read_bytes()
        ]
        shutil.rmtree(profile, ignore_errors=True)
        assert kept == []


def _type_card(driver: webdriver.Chrome, card: dict[str, str]) -> None:
    """Type the card into the vault's iframe, as a shopper would."""
    frame = WebDriverWait(driver, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
    )
    driver.switch_to.frame(frame)
    WebDriverWait(driver, STEP_TIMEOUT).until(lambda d: d.find_element(By.ID, "number"))
    for field, value in card.items():
        driver.find_element(By.ID, field).send_keys(value)
    driver.switch_to.default_content()


def _result(driver: webdriver.Chrome, prefix: tuple[str, ...]) -> str:
    def settled(d: Any) -> str | None:
        text = str(d.find_element(By.ID, "result").text)
        return text if text.startswith(prefix) else None

    return str(WebDriverWait(driver, STEP_TIMEOUT).until(settled))


def _audit(vault: VaultServer) -> list[dict[str, Any]]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        return [json.loads(row) for row in rows]


def test_a_card_typed_into_the_hosted_fields_reaches_the_acquirer_as_a_token_only(
    checkout: Checkout, browser: webdriver.Chrome
) -> None:
    vault, acquirer, shop = checkout.vault, checkout.acquirer, checkout.shop
    received_before = len(acquirer.received)
    browser.get(shop.url + "/")
    _type_card(
        browser,
        {"number": CARD, "expiry": EXPIRY, "security_code": CODE, "name": "Ana Souza"},
    )
    browser.find_element(By.ID, "pay").click()
    assert _result(browser, ("approved", "declined", "error")) == "approved A1B2C3"

    # The shop's backend received a token and nothing else of the card.
    [token] = shop.tokens
    assert token != CARD
    assert token[:6] + token[-4:] == "5555554444"
    requests = shop.requests_log.read_bytes()
    assert token.encode() in requests
    assert find_leaks(requests + shop.backend_log.read_bytes(), [CARD], allowed=[token]) == []
    # The acquirer received the card exactly once, from the vault's relay.
    # The acquirer received number, expiry, code and name exactly once, from the relay.
    sent = acquirer.received[received_before:]
    assert [body["card"] for body in sent] == [
        {
            "number": CARD,
            "expiration_month": "11",
            "expiration_year": "31",
            "security_code": CODE,
            "cardholder_name": "Ana Souza",
        }
    ]
    journal = (checkout.tmp / ACQUIRER_SIDE / "received.jsonl").read_text()
    assert journal.count(CARD) >= 1

    # A second authorization with the same token (a retry, a recurring charge): the
    # card again, its code no more (held once, consumed by the first relay call).
    assert shop.pay(token)["approved"]
    second = acquirer.received[-1]
    assert second["card"]["number"] == CARD
    assert second["card"]["expiration_month"] == "11"
    assert "security_code" not in second["card"]
    assert not shows_code(json.dumps(acquirer.received[received_before + 1 :]), CODE)
    assert not shows_code(requests + shop.backend_log.read_bytes(), CODE)

    # The audit log shows each step: the session, the capture, the relays.
    entries = _audit(vault)
    [session] = shop.sessions
    opened = [e for e in entries if e["action"] == "capture.session.create"]
    assert any(e["details"]["session"] == session.session_id for e in opened)
    [captured] = [
        e
        for e in entries
        if e["action"] == "capture" and e["details"].get("session") == session.session_id
    ]
    assert captured["outcome"] == "success"
    assert captured["actor"] == "spiffe://cofre/payments"
    assert captured["details"]["origin"] == shop.url
    relays = [e for e in entries if e["action"] == "relay" and e["outcome"] == "success"]
    assert len(relays) >= 2
    assert not shows_code(json.dumps(entries), CODE)
    # The console says nothing of the card either.
    console = json.dumps(browser.get_log("browser"))
    assert find_leaks(console.encode(), [CARD], allowed=[token]) == []


def test_the_fields_refuse_a_luhn_invalid_card_and_the_shop_gets_an_error(
    checkout: Checkout, browser: webdriver.Chrome
) -> None:
    shop = checkout.shop
    paid = len(shop.tokens)
    browser.get(shop.url + "/")
    _type_card(browser, {"number": "5555555555554445", "expiry": EXPIRY})
    browser.find_element(By.ID, "pay").click()
    assert _result(browser, ("error",)) == "error invalid_pan"
    assert len(shop.tokens) == paid


def test_finding_a_card_typed_and_left_is_not_there_after_back(
    checkout: Checkout, browser: webdriver.Chrome
) -> None:
    """Low (fixed, review 34). A shopper who types a card and leaves the checkout
    without paying (another page, a link) left it in the fields: Chromium keeps the
    page whole in its back/forward cache (no-store on the fields' frame does not stop
    it, only on the top page), and Back showed the number, expiry, security code and
    name typed, to whoever pressed it next on a shared device, with the card held in
    the browser's memory meanwhile. The fields now empty their inputs as the page is
    hidden (``pagehide``, which keeps the cache usable, unlike ``unload``)."""
    browser.get(checkout.shop.url + "/")
    typed = {"number": CARD, "expiry": EXPIRY, "security_code": CODE, "name": "Ana Souza"}
    _type_card(browser, typed)
    browser.get(checkout.vault.capture_url + "/v1/capture.js")  # away, no payment
    browser.back()
    frame = WebDriverWait(browser, STEP_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#card iframe")
    )
    browser.switch_to.frame(frame)
    # Which fields still hold what was typed (their names only: never the card).
    left = [field for field in typed if browser.find_element(By.ID, field).get_attribute("value")]
    browser.switch_to.default_content()
    assert left == []
