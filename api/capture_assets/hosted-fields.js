/*
 * Cofre hosted fields: runs inside the iframe, on the vault's capture origin. It takes
 * the session's secret and style from the shop's page (messages accepted only from the
 * session's origin and the parent window), posts the card to this origin's capture
 * endpoint, and tells the parent the token, never the card. No inline script, no eval.
 */
(function () {
  "use strict";
  var root = document.documentElement;
  var parentOrigin = root.getAttribute("data-parent-origin");
  var session = root.getAttribute("data-session");
  var codeRule = root.getAttribute("data-security-code");
  var form = document.getElementById("card");
  var number = document.getElementById("number");
  var expiry = document.getElementById("expiry");
  var code = document.getElementById("security_code");
  var name = document.getElementById("name");
  var statusLine = document.getElementById("status");
  var STYLE_KEYS = ["color", "backgroundColor", "borderColor", "borderRadius", "borderWidth",
    "fontFamily", "fontSize", "fontWeight", "letterSpacing", "lineHeight", "padding"];
  var SAFE_VALUE = /^[#(),.%\w\s-]{1,64}$/;
  var secret = null;
  var busy = false;
  var done = false;
  // A capture the vault refused before it did anything (its share of the database in
  // use, 503 capture_busy; a rate limit, 429 rate_limited) is sent again after the
  // Retry-After it names, the card kept in the fields: at most RETRY_ATTEMPTS tries,
  // their waits RETRY_BUDGET_SECONDS together at most (a longer Retry-After is not
  // waited for). Nothing else is sent again: after a network error or any other answer
  // the vault may have taken the card, and a second capture is no replay (it spends
  // another use of the session, or is refused capture_session_used, the token lost).
  var RETRY_ATTEMPTS = 4;
  var RETRY_BUDGET_SECONDS = 10;
  var retryTimer = null;
  var toldComplete = null;

  if (codeRule === "forbidden") {
    document.getElementById("code-field").classList.add("hidden");
  }

  function tell(message) {
    message.cofre = 1;
    window.parent.postMessage(message, parentOrigin);
  }

  function applyStyle(style) {
    if (!style || typeof style !== "object") { return; }
    var inputs = [number, expiry, code, name];
    STYLE_KEYS.forEach(function (key) {
      var value = style[key];
      // No url(), no expressions: plain colours, lengths and font names only.
      if (typeof value !== "string" || !SAFE_VALUE.test(value) || /url|expression/i.test(value)) {
        return;
      }
      inputs.forEach(function (input) { input.style[key] = value; });
      if (key === "color" || key === "fontFamily" || key === "fontSize") {
        document.body.style[key] = value;
      }
    });
  }

  function digits(text) { return text.replace(/[\s-]/g, ""); }

  function complete() {
    var ok = /^[0-9]{12,19}$/.test(digits(number.value)) && /^[0-9]{2}\/[0-9]{2}$/.test(expiry.value);
    if (codeRule === "required") { ok = ok && /^[0-9]{3,4}$/.test(code.value); }
    return ok;
  }

  function clearCard() {
    number.value = "";
    expiry.value = "";
    code.value = "";
  }

  // This document never received the session's secret: the frame was reloaded (by the
  // shopper, or by the browser: a frame moved in the page, a renderer restarted) after
  // capture.js had handed it to the document before, and capture.js hands it over once
  // and drops it. Pay did nothing at all (session 38); now the card typed, which this
  // form can never send, is emptied, the shopper is told, and the shop's page is told
  // to open a new session (fields_reloaded).
  function lost() {
    clearCard();
    statusLine.textContent = "This card form was reloaded and cannot send the card: " +
      "start the payment again.";
    tell({ type: "error", code: "fields_reloaded", status: 0,
           title: "The card form was reloaded; open a new capture session" });
  }

  function submit() {
    if (busy || done) { return; }
    if (secret === null) { lost(); return; }
    busy = true;
    statusLine.textContent = "";
    send(1, 0);
  }

  function cardBody() {
    var body = { secret: secret, number: digits(number.value) };
    if (expiry.value.trim()) { body.expiry = expiry.value.trim(); }
    if (codeRule !== "forbidden" && code.value.trim()) { body.security_code = code.value.trim(); }
    if (name.value.trim()) { body.name = name.value.trim(); }
    return body;
  }

  // Whole seconds only (the vault sends them); an HTTP date or nothing: one second.
  function retryAfter(response) {
    var text = (response.headers.get("retry-after") || "").trim();
    return /^[0-9]{1,5}$/.test(text) ? Math.max(1, Number(text)) : 1;
  }

  function refusedBeforeWork(status, answer) {
    return (status === 503 && answer.code === "capture_busy") ||
      (status === 429 && answer.code === "rate_limited");
  }

  function send(attempt, waited) {
    fetch("/v1/capture/" + session, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(cardBody()),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.json().then(function (answer) {
        return { ok: response.ok, status: response.status, answer: answer, wait: retryAfter(response) };
      });
    }).then(function (result) {
      var answer = result.answer || {};
      if (result.ok) {
        busy = false;
        done = true;
        clearCard();
        tell({ type: "token", token: answer.token, format: answer.format,
               masked_pan: answer.masked_pan, expiry: answer.expiry });
      } else if (refusedBeforeWork(result.status, answer) && attempt < RETRY_ATTEMPTS &&
                 waited + result.wait <= RETRY_BUDGET_SECONDS) {
        statusLine.textContent = "The card service is busy: trying again in " + result.wait +
          " s (" + attempt + " of " + (RETRY_ATTEMPTS - 1) + ")";
        // A little spread, so the shoppers refused in one spike do not all come back at once.
        retryTimer = window.setTimeout(function () {
          retryTimer = null;
          statusLine.textContent = "Trying again";
          send(attempt + 1, waited + result.wait);
        }, result.wait * 1000 + Math.floor(Math.random() * 500));
      } else {
        busy = false;
        statusLine.textContent = answer.title || "The card was not accepted";
        tell({ type: "error", code: answer.code, title: answer.title, status: answer.status });
      }
    }, function () {
      busy = false;
      tell({ type: "error", code: "network_error", title: "The vault could not be reached", status: 0 });
    });
  }

  window.addEventListener("message", function (event) {
    if (event.origin !== parentOrigin || event.source !== window.parent) { return; }
    var data = event.data;
    if (!data || data.cofre !== 1) { return; }
    if (data.type === "init" && secret === null && typeof data.secret === "string") {
      secret = data.secret;
      applyStyle(data.style);
    } else if (data.type === "submit") {
      submit();
    }
  });

  // The page leaves (another page, a link, the tab closed): the browser may keep it
  // whole for Back (its back/forward cache), the typed card with it (review 34).
  // "pagehide", not "unload": it leaves the cache usable.
  // A retry waiting is dropped with the card: nothing is sent from a page left.
  window.addEventListener("pagehide", function () {
    if (retryTimer !== null) {
      window.clearTimeout(retryTimer);
      retryTimer = null;
      busy = false;
      statusLine.textContent = "";
    }
    clearCard();
    name.value = "";
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  // The parent is told when the card becomes complete or stops being so, never at each
  // keystroke: a message per input event told any script on the shop's page how many
  // characters the shopper typed, and when (review web36).
  form.addEventListener("input", function () {
    var now = complete();
    if (now !== toldComplete) {
      toldComplete = now;
      tell({ type: "change", complete: now });
    }
  });
  expiry.addEventListener("input", function () {
    var d = expiry.value.replace(/[^0-9]/g, "").slice(0, 4);
    expiry.value = d.length > 2 ? d.slice(0, 2) + "/" + d.slice(2) : d;
  });

  tell({ type: "ready" });
}());
