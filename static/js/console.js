// Draws the uPlot charts whose data a page embeds as <script id="chart-data" type="application/json">
// ([{id, title, x: [unix s], y: [value|null], target}]), on load and after each HTMX swap.
(function () {
  function draw() {
    var el = document.getElementById("chart-data");
    if (!el || !window.uPlot) return;
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
                   series: opts, scales: {x: {time: true}}, axes: [{}, {label: c.unit || "", size: 60}]}, cols, box);
        return;
      }
      var series = [{}, {label: c.title, stroke: "#2563eb", width: 2, spanGaps: false}];
      var data = [c.x, c.y];
      if (c.target !== null && c.target !== undefined) {
        series.push({label: "target", stroke: "#dc2626", dash: [6, 4], width: 1});
        data.push(c.x.map(function () { return c.target; }));
      }
      if (c.events) {
        series.push({label: "load/unload", stroke: "transparent", points: {show: true, size: 9, stroke: "#d97706", fill: "#d97706"}});
        data.push(c.events);
      }
      new uPlot({title: c.title, width: Math.min(560, box.clientWidth || 560), height: 220, series: series,
                 scales: {x: {time: true}}}, data, box);
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
