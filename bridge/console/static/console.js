// The console's only script, and it is optional: every page works without it.
// A form with data-confirm asks before it is sent (approve, pause, resume).
document.addEventListener("submit", function (event) {
  var question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
