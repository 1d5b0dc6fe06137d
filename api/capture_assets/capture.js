/*
 * Cofre hosted card fields: the script a shop's page loads from the vault's capture
 * origin. It mounts the card inputs in an iframe of that origin and hands the shop a
 * token; the shop's page never sees the card. Plain JavaScript, no build step, no
 * dependencies. Load it with the Subresource Integrity hash in docs/capture.md:
 *
 *   <script src="https://CAPTURE-ORIGIN/v1/capture.js"
 *           integrity="sha384-..." crossorigin="anonymous"></script>
 *
 *   var fields = Cofre.mount({
 *     container: "#card",          // element or selector
 *     session: SESSION_ID,         // from your backend (POST /v1/capture-sessions)
 *     secret: CLIENT_SECRET,       // idem; handed to the iframe only
 *     style: { color: "#222" },    // optional, see docs/capture.md
 *     onToken: function (result) { ... },   // {token, format, masked_pan, expiry}
 *     onError: function (problem) { ... },  // {code, title, status}
 *     onChange: function (state) { ... }    // {complete: bool}
 *   });
 *   fields.submit();
 *
 * Messages go only to the capture origin and are accepted only from the iframe it
 * mounted (origin and source both checked).
 */
(function () {
  "use strict";
  // Through Document.prototype, and only a script element: an element of the page
  // with name="currentScript" (markup, no script) replaces document.currentScript, and
  // its src named the attacker's origin as the fields' (DOM clobbering, review web36).
  var current = Object.getOwnPropertyDescriptor(Document.prototype, "currentScript");
  var script = current && current.get ? current.get.call(document) : null;
  if (!(script instanceof HTMLScriptElement) || !script.src) {
    throw new Error("Cofre: load capture.js with a <script src> tag");
  }
  var captureOrigin = new URL(script.src).origin;
  var SESSION = /^cs_[a-z]{32}$/;

  function mount(options) {
    var container = typeof options.container === "string"
      ? document.querySelector(options.container) : options.container;
    if (!container) { throw new Error("Cofre: container not found"); }
    if (!SESSION.test(String(options.session))) { throw new Error("Cofre: bad session id"); }
    if (typeof options.secret !== "string" || !options.secret) {
      throw new Error("Cofre: the session's client secret is required");
    }
    var frame = document.createElement("iframe");
    frame.src = captureOrigin + "/v1/hosted-fields/" + options.session;
    frame.title = options.title || "Card details";
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.style.border = "0";
    frame.style.width = "100%";
    frame.style.height = options.height || "230px";
    var ready = false;
    var pendingSubmit = false;
    var secret = options.secret;

    function post(message) {
      message.cofre = 1;
      frame.contentWindow.postMessage(message, captureOrigin);
    }

    function call(handler, value) {
      if (typeof handler === "function") { handler(value); }
    }

    function onMessage(event) {
      if (event.origin !== captureOrigin || event.source !== frame.contentWindow) { return; }
      var data = event.data;
      if (!data || data.cofre !== 1) { return; }
      if (data.type === "ready" && !ready) {
        ready = true;
        post({ type: "init", secret: secret, style: options.style || {} });
        secret = null;
        if (pendingSubmit) { pendingSubmit = false; post({ type: "submit" }); }
      } else if (data.type === "token") {
        call(options.onToken, {
          token: String(data.token), format: String(data.format),
          masked_pan: String(data.masked_pan), expiry: data.expiry ? String(data.expiry) : null
        });
      } else if (data.type === "error") {
        call(options.onError, {
          code: String(data.code), title: String(data.title || ""), status: Number(data.status)
        });
      } else if (data.type === "change") {
        call(options.onChange, { complete: Boolean(data.complete) });
      }
    }

    window.addEventListener("message", onMessage);
    container.appendChild(frame);
    return {
      submit: function () {
        if (ready) { post({ type: "submit" }); } else { pendingSubmit = true; }
      },
      destroy: function () {
        window.removeEventListener("message", onMessage);
        if (frame.parentNode) { frame.parentNode.removeChild(frame); }
      }
    };
  }

  window.Cofre = Object.freeze({ mount: mount, origin: captureOrigin });
}());
