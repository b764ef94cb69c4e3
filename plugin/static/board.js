// The day board, made quicker with a script (everything also works without it):
// - the filters apply as soon as they change;
// - the search filters the rows in the page as you type; its text stays in this tab
//   (the URL's #fragment and sessionStorage), never in a request to a server;
// - "Next who needs a call" (or n / p while the list has focus) moves to the next or
//   previous visible visit that needs a call;
// - coming back to the board focuses the row that was opened.
(function () {
  "use strict";
  document.documentElement.classList.add("cd-js");

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  function fragment() {
    var out = { anchor: null, q: null };
    var raw = window.location.hash.replace(/^#/, "");
    raw.split("&").forEach(function (part) {
      if (!part) { return; }
      var eq = part.indexOf("=");
      if (eq < 0) { out.anchor = decodeURIComponent(part); }
      else if (part.slice(0, eq) === "q") { out.q = decodeURIComponent(part.slice(eq + 1).replace(/\+/g, " ")); }
    });
    return out;
  }

  function writeFragment(anchor, q) {
    var parts = [];
    if (anchor) { parts.push(encodeURIComponent(anchor)); }
    if (q) { parts.push("q=" + encodeURIComponent(q)); }
    var url = window.location.pathname + window.location.search + (parts.length ? "#" + parts.join("&") : "");
    window.history.replaceState(window.history.state, "", url);
  }

  ready(function () {
    var root = document.querySelector(".bd");
    if (!root) { return; }
    var storeKey = "caredesk-board-q:" + (root.getAttribute("data-launch") || "");

    // Filters: apply on change.
    var filters = document.querySelector("form[data-autosubmit]");
    if (filters) {
      // Empty choices ("all locations") stay out of the URL.
      var apply = function () {
        var params = new URLSearchParams();
        new FormData(filters).forEach(function (value, key) { if (value) { params.append(key, value); } });
        window.location.assign(filters.getAttribute("action") + "?" + params.toString());
      };
      filters.addEventListener("change", apply);
      // The day picker sits in the header but belongs to the same form.
      Array.prototype.forEach.call(document.querySelectorAll("[form=bd-filter-form]"), function (el) {
        el.addEventListener("change", apply);
      });
    }

    var rows = Array.prototype.slice.call(document.querySelectorAll("[data-row]"));
    var groups = Array.prototype.slice.call(document.querySelectorAll("[data-group]"));
    var search = document.getElementById("bd-q");
    var shown = document.querySelector("[data-shown]");
    var noMatch = document.querySelector("[data-no-match]");
    var state = fragment();

    function digitsOf(text) { return text.replace(/\D+/g, ""); }
    // Lower case without accents, as the server folds the rows' search text.
    function fold(text) { return text.toLowerCase().normalize("NFD").replace(/[\u0300-\u036f]/g, ""); }

    // What a row is found by: the name, the preferred name and the MRN; the phone's digits.
    function textOf(row, selector) {
      var el = row.querySelector(selector);
      return el ? el.textContent : "";
    }
    var index = rows.map(function (row) {
      var phone = textOf(row, ".bd-phone");
      var ids = textOf(row, ".bd-ids").replace(phone, "");
      return {
        words: fold([textOf(row, "[data-patient-link]"), textOf(row, ".bd-pref"), ids].join(" ")),
        digits: digitsOf(phone)
      };
    });
    function matches(i, q) {
      if (!q) { return true; }
      var lower = fold(q).trim();
      var digits = digitsOf(lower);
      if (digits && /^[\d\s().+\-]+$/.test(lower)) {
        return index[i].digits.indexOf(digits) >= 0 || index[i].words.indexOf(digits) >= 0;
      }
      return lower.split(/\s+/).every(function (word) { return index[i].words.indexOf(word) >= 0; });
    }

    function applySearch(q) {
      var count = 0;
      rows.forEach(function (row, i) {
        var keep = matches(i, q);
        row.hidden = !keep;
        if (keep) { count += 1; }
      });
      groups.forEach(function (g) {
        var visible = g.querySelectorAll("[data-row]:not([hidden])").length;
        g.hidden = visible === 0;
        var words = g.querySelector("[data-count-words]");
        if (words) {
          if (!words.hasAttribute("data-all")) { words.setAttribute("data-all", words.textContent); }
          words.textContent = q ? visible + " found" : words.getAttribute("data-all");
        }
      });
      if (shown) { shown.textContent = String(count); }
      if (noMatch) { noMatch.hidden = count > 0 || rows.length === 0; }
    }

    if (search) {
      var form = search.form;
      var initial = state.q !== null ? state.q : (window.sessionStorage.getItem(storeKey) || search.value || "");
      search.value = initial;
      if (initial) { applySearch(initial); }
      var timer = null;
      search.addEventListener("input", function () {
        window.clearTimeout(timer);
        timer = window.setTimeout(function () {
          var q = search.value;
          applySearch(q);
          try { window.sessionStorage.setItem(storeKey, q); } catch (e) { /* private mode */ }
          writeFragment(null, q);
        }, 120);
      });
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        applySearch(search.value);
      });
    }

    // Next / previous visit that needs a call, from the row that has focus (or the top).
    function callRows() {
      return rows.filter(function (r) { return r.hasAttribute("data-needs-call") && !r.hidden; });
    }
    function currentRow() {
      var el = document.activeElement;
      return el && el.closest ? el.closest("[data-row]") : null;
    }
    var live = document.getElementById("bd-shown");
    function go(step) {
      var list = callRows();
      if (!list.length) { return; }
      var here = currentRow();
      var index = -1;
      if (here) {
        var pos = rows.indexOf(here);
        if (step > 0) {
          index = list.findIndex(function (r) { return rows.indexOf(r) > pos; });
        } else {
          for (var i = list.length - 1; i >= 0; i -= 1) { if (rows.indexOf(list[i]) < pos) { index = i; break; } }
        }
      } else {
        index = step > 0 ? 0 : list.length - 1;
      }
      if (index < 0) { index = step > 0 ? 0 : list.length - 1; }
      var target = list[index];
      var link = target.querySelector("[data-patient-link]") || target.querySelector("input");
      if (link) { link.focus(); }
      target.scrollIntoView({ block: "center" });
      if (live) {
        live.setAttribute("data-last-call", String(index + 1));
      }
    }
    var next = document.querySelector("[data-next-call]");
    if (next) {
      next.addEventListener("click", function (event) { event.preventDefault(); go(1); });
    }
    var list = document.querySelector("[data-board]");
    if (list) {
      // Single keys act only while focus is inside the list (WCAG 2.1.4).
      list.addEventListener("keydown", function (event) {
        if (event.altKey || event.ctrlKey || event.metaKey) { return; }
        if (event.target && event.target.type === "checkbox" && event.key === " ") { return; }
        if (event.key === "n") { event.preventDefault(); go(1); }
        if (event.key === "p") { event.preventDefault(); go(-1); }
      });
    }

    // Bulk selection: "select all shown" and a count on the button.
    var all = document.querySelector("[data-select-all]");
    var wrap = document.querySelector("[data-select-all-wrap]");
    var counts = Array.prototype.slice.call(document.querySelectorAll("[data-selected-count]"));
    var boxes = Array.prototype.slice.call(document.querySelectorAll("input[name=appointment]"));
    function recount() {
      var n = boxes.filter(function (b) { return b.checked; }).length;
      counts.forEach(function (c) { c.textContent = n ? " (" + n + ")" : ""; });
    }
    if (wrap && boxes.length) { wrap.hidden = false; }
    if (all) {
      all.addEventListener("change", function () {
        boxes.forEach(function (b) {
          var row = b.closest("[data-row]");
          if (row && !row.hidden) { b.checked = all.checked; }
        });
        recount();
      });
    }
    boxes.forEach(function (b) { b.addEventListener("change", recount); });

    // Back from a patient: the row that was opened gets focus.
    // Back from a patient: the row that was opened has focus (rows take focus, so the
    // browser's own jump to the #fragment lands there too).
    if (state.anchor) {
      var row = document.getElementById(state.anchor);
      if (row && !row.hidden) {
        row.focus({ preventScroll: true });
        row.scrollIntoView({ block: "center" });
      }
    }
  });
}());
