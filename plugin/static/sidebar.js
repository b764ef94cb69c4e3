/* The sidebar's progressive enhancement (CSP: script-src 'self'; the page works without
   it). 1. Focus goes to the first field with an error. 2. When the page was sent before
   the EHR answered, its sections are fetched and put in place as they arrive; a session
   the EHR ended reloads the page, which then says to reopen CareDesk from the chart. */
(function () {
  "use strict";
  var root = document.querySelector(".cd-sidebar");
  document.documentElement.classList.add("cd-js");

  function focusFirstError() {
    var field = document.querySelector("[data-first-error]");
    if (!field) return;
    var details = field.closest("details");
    if (details) details.open = true;
    field.focus();
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("[data-part]").forEach(function (fresh) {
      var old = document.getElementById(fresh.id);
      if (!old) return;
      // Never pull a control from under the person using it.
      if (old.hasAttribute("data-keep-if-focused") && old.contains(document.activeElement)) return;
      old.replaceWith(document.importNode(fresh, true));
    });
  }

  function load(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.headers.get("X-CareDesk-Ended")) {
          window.location.reload();
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html) swap(html);
      });
  }

  function failed() {
    document.querySelectorAll("[data-testid=sections-loading], [data-testid=alerts-loading], .cd-id-loading").forEach(function (el) {
      el.textContent = "CareDesk could not load this from the EHR. ";
      var again = document.createElement("a");
      again.href = window.location.pathname + "?refresh=1&wait=1";
      again.textContent = "Try again";
      el.appendChild(again);
    });
  }

  focusFirstError();
  if (root && root.getAttribute("data-loading") === "1") {
    var waiting = [];
    if (document.querySelector(".cd-id-loading")) waiting.push(load(root.getAttribute("data-identity-url")));
    waiting.push(load(root.getAttribute("data-parts-url")));
    Promise.all(waiting).then(function () {
      root.setAttribute("data-loading", "0");
    }, failed);
  }
})();
