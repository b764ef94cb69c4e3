// Staff pages: a filter form marked data-autosubmit applies as soon as a choice changes
// (its Show button stays for browsers without scripts). Empty choices stay out of the URL.
(function () {
  "use strict";
  document.documentElement.classList.add("cd-js");
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-autosubmit]"), function (form) {
      form.addEventListener("change", function () {
        var params = new URLSearchParams();
        new FormData(form).forEach(function (value, key) { if (value) { params.append(key, value); } });
        var query = params.toString();
        window.location.assign(form.getAttribute("action") + (query ? "?" + query : ""));
      });
    });
  });
}());
