// The preload editor's week: click an hour to start the window there (ticking its day),
// then the hour it ends in; the form's change event asks the server for a new preview.
(function () {
  var start = null;
  function pad(h) { return (h < 10 ? "0" : "") + h + ":00"; }
  document.addEventListener("click", function (ev) {
    var td = ev.target.closest("#preview td.slot");
    var form = document.getElementById("window-form");
    if (!td || !form) return;
    var hour = parseInt(td.dataset.hour, 10);
    var day = form.querySelector('input[name=days_of_week][value="' + td.dataset.day + '"]');
    if (day) day.checked = true;
    if (start === null) {
      start = hour;
      form.querySelector("input[name=start_time]").value = pad(hour);
      td.classList.add("picking");
    } else {
      form.querySelector("input[name=end_time]").value = pad((hour + 1) % 24);
      start = null;
    }
    form.dispatchEvent(new Event("change", {bubbles: true}));
  });
})();
