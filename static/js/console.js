// Draws the uPlot charts whose data a page embeds as <script id="chart-data" type="application/json">
// ([{id, title, label, unit, x: [unix s], y: [value|null], target}]), on load and after each HTMX swap.
// A chart with a `label` has its legend written in the page (it reads without hovering): uPlot's
// own legend, whose values show only under the pointer, is left out.
(function () {
  // Time axes in the console's zone (TIME_ZONE, <body data-tz>), named under the axis, not the browser's.
  function inZone(tz) {
    return function (ts) { return uPlot.tzDate(new Date(ts * 1e3), tz); };
  }
  function draw() {
    var el = document.getElementById("chart-data");
    if (!el || !window.uPlot) return;
    var tz = document.body.dataset.tz || "UTC";
    JSON.parse(el.textContent).forEach(function (c) {
      var box = document.getElementById(c.id);
      if (!box || box.dataset.drawn) return;
      box.dataset.drawn = "1";
      if (c.series) {  // several named series: [{label, y, stroke, dash, points}] (points: markers only)
        var opts = [{}], cols = [c.x];
        c.series.forEach(function (s) {
          opts.push(s.points
            ? {label: s.label, stroke: "transparent", points: {show: true, size: 10, stroke: s.stroke, fill: s.stroke}}
            : {label: s.label, stroke: s.stroke, width: s.width || 2, dash: s.dash, spanGaps: false});
          cols.push(s.y);
        });
        new uPlot({title: c.title, width: Math.min(c.width || 1100, box.clientWidth || 1100), height: c.height || 320,
                   series: opts, scales: {x: {time: true}}, tzDate: inZone(tz),
                   axes: [{label: tz}, {label: c.unit || "", size: 60}]}, cols, box);
        return;
      }
      var series = [{}, {label: c.label || c.title, stroke: "#2563eb", width: 2, spanGaps: false,
                         points: {show: true, size: 4}}];
      var data = [c.x, c.y];
      if (c.target !== null && c.target !== undefined) {
        series.push({label: "target", stroke: "#dc2626", dash: [6, 4], width: 1, points: {show: false}});
        data.push(c.x.map(function () { return c.target; }));
      }
      if (c.events) {
        series.push({label: "load/unload", stroke: "transparent", points: {show: true, size: 9, stroke: "#d97706", fill: "#d97706"}});
        data.push(c.events);
      }
      var opts = {width: Math.min(560, box.clientWidth || 560), height: 220, series: series,
                  scales: {x: {time: true}}, tzDate: inZone(tz), axes: [{label: tz}, {label: c.unit || "", size: 56}]};
      if (!c.label) opts.title = c.title;
      new uPlot(opts, data, box);
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
