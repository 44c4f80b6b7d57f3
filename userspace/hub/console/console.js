// Tollgate console: draws the traffic chart from the page's JSON block with uPlot (MIT,
// built into the hub binary). No other script runs on the pages.
"use strict";
(function () {
  function human(v) {
    if (v == null) return "";
    var u = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(v) >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return (i ? v.toFixed(1) : v.toFixed(0)) + " " + u[i];
  }
  function draw() {
    var el = document.getElementById("chart");
    var src = document.getElementById("chart-data");
    if (!el || !src || typeof uPlot === "undefined") return;
    var chart = JSON.parse(src.textContent);
    if (!chart.any) { el.textContent = "No traffic in this range yet."; return; }
    var data = chart.data;
    var width = Math.max(280, el.clientWidth - 16);
    var opts = {
      width: width, height: 220,
      series: [
        {},
        { label: "Upload", stroke: "#d9534f", fill: "rgba(217,83,79,0.12)", width: 2, value: function (u, v) { return human(v); } },
        { label: "Download", stroke: "#2f66e0", fill: "rgba(47,102,224,0.12)", width: 2, value: function (u, v) { return human(v); } }
      ],
      axes: [{}, { values: function (u, vals) { return vals.map(human); }, size: 70 }]
    };
    var plot = new uPlot(opts, data, el);
    window.addEventListener("resize", function () {
      plot.setSize({ width: Math.max(280, el.clientWidth - 16), height: 220 });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
