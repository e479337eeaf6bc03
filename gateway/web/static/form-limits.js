// The referral form's size limits, checked before the form is sent: a field over its limit gets a message next
// to it and nothing is sent, so what was typed stays (a form over the gateway's limit would be refused unread,
// and a Back to a refused POST does not bring the typing back). The server checks the same limits again.
(function () {
  "use strict";
  var form = document.querySelector("form[data-limits]");
  if (!form) { return; }
  var limits = JSON.parse(form.getAttribute("data-limits"));
  form.addEventListener("submit", function (event) {
    var first = null;
    Object.keys(limits.fields).forEach(function (name) {
      var field = form.elements.namedItem(name);
      if (!field) { return; }
      var id = name + "-limit-problem";
      var old = document.getElementById(id);
      if (old) { old.remove(); }
      if (field.value.length > limits.fields[name]) {
        var problem = document.createElement("span");
        problem.className = "problem";
        problem.id = id;
        problem.setAttribute("role", "alert");
        problem.textContent = "must be at most " + limits.fields[name].toLocaleString("en") +
          " characters (got " + field.value.length.toLocaleString("en") + ")";
        field.parentNode.insertBefore(problem, field);
        field.setAttribute("aria-invalid", "true");
        first = first || field;
      }
    });
    if (first) {
      event.preventDefault();
      first.focus();
    }
  });
}());
