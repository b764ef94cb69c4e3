// Submits the authorize-post form (SMART `authorize-post`) without a click.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("cd-autopost");
  if (form) { form.submit(); }
});
