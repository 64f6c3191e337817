"""The report in a real headless browser (Debian's chromium): it loads offline with no console
output, Plotly draws every figure, hover labels show escaped user strings as text, tables sort.

Chromium is driven by its command-line flags only: `--dump-dom` after the page's scripts ran
(virtual time), console messages read from its stderr log. A small probe script, appended to a
copy of the page by the test, hovers a point and clicks a table header, then writes what it saw
into the DOM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dse"))  # report_factory
from report_factory import EVIL, fill_store  # noqa: E402

from db.session import open_store, session_scope  # noqa: E402
from dse.report import write_report  # noqa: E402

CHROMIUM = os.environ.get("DSE_TEST_CHROMIUM") or shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM, reason="headless chromium not installed"),
]
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")

PROBE = """<pre id="probe">pending</pre><script>
window.addEventListener("load", function () { setTimeout(function () {
  function hover(id, prefix, point) {
    var gd = document.getElementById(id);
    var i = gd.data.findIndex(function (t) { return t.name.indexOf(prefix) === 0; });
    Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: point}]);
    var layer = gd.querySelector(".hoverlayer");
    return layer ? layer.textContent : null;
  }
  function order(table) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return r.cells[0].textContent; });
  }
  var figs = {};
  document.querySelectorAll("div.plotly-graph-div").forEach(function (d) {
    figs[d.id] = d.querySelectorAll("svg.main-svg").length; });
  var overlaps = {};  // does a figure's legend cover its title?
  document.querySelectorAll("div.plotly-graph-div").forEach(function (d) {
    var l = d.querySelector("g.legend"), t = d.querySelector("text.gtitle");
    if (!l || !t) { overlaps[d.id] = null; return; }
    var a = l.getBoundingClientRect(), b = t.getBoundingClientRect();
    overlaps[d.id] = !(a.right <= b.left || b.right <= a.left || a.bottom <= b.top ||
                       b.bottom <= a.top);
  });
  var table = document.querySelector("table.front");
  var header = Array.prototype.find.call(table.tHead.rows[0].cells, function (th) {
    return th.textContent === "at final"; });
  header.click(); var up = order(table);
  header.click(); var down = order(table);
  document.getElementById("probe").textContent = JSON.stringify({
    figures: figs, scripts: document.scripts.length, overlaps: overlaps,
    front: hover("fig-front-1", "front 1", 2), cross: hover("fig-cross", "run 2", 0),
    up: up, down: down});
}, 500); });
</script>"""


def _chromium(url: str, tmp_path: Path, *flags: str) -> tuple[str, list[str]]:
    """Run headless chromium on `url`; returns stdout and the console messages it logged."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any network fetch fails: offline for real
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", *flags, url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, CONSOLE.findall(done.stderr)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-device report from a real store, one device named like an XSS attempt."""
    tmp = tmp_path_factory.mktemp("report")
    store = tmp / "mess.db"
    run_ids = fill_store(store, devices=("cpu-a", EVIL))
    engine = open_store(f"sqlite:///{store}")
    try:
        with session_scope(engine, readonly=True) as s:
            return write_report(s, run_ids, tmp / "report.html")
    finally:
        engine.dispose()


@pytest.mark.slow
def test_report_loads_draws_and_hovers(report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom, console = _chromium(probed.as_uri(), tmp_path, "--dump-dom")
    assert console == []  # no errors, no warnings, no logs
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found and found.group(1) != "pending", "the probe did not run"
    probe = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">")
                       .replace("&quot;", '"').replace("&amp;", "&"))
    # cross + per run (front, exit rates, histograms); each drawn plot has its main SVGs.
    assert set(probe["figures"]) == {"fig-cross", "fig-front-1", "fig-exits-1", "fig-hist-1",
                                     "fig-front-2", "fig-exits-2", "fig-hist-2"}
    assert all(n >= 2 for n in probe["figures"].values()), probe["figures"]
    assert dom.count('class="main-svg"') >= 14
    front = probe["front"]
    assert "candidate 2 · front 1" in front and "60.05 %" in front and "36.00 ms p95" in front
    assert "accuracy profile 1" in front
    cross = probe["cross"]
    assert "C1" in cross and "elsewhere" in cross and "run 1 · cpu-a: 12.00 ms" in cross
    assert EVIL in cross  # the hostile device name is shown as plain text...
    assert probe["scripts"] == 2 + 7 + 1 + 1  # ...and never became a script element
    # Legends never cover titles (front, exit-rate and cross-device plots have both).
    with_legend = {k: v for k, v in probe["overlaps"].items() if v is not None}
    assert {"fig-cross", "fig-front-1", "fig-exits-1"} <= set(with_legend), probe["overlaps"]
    assert not any(with_legend.values()), probe["overlaps"]
    assert probe["up"] == ["0", "2", "1", "3"]  # sorted by share at the final exit
    assert probe["down"] == ["3", "1", "0", "2"]


def test_console_errors_would_be_seen(tmp_path: Path) -> None:
    """The console check above can fail: a page that logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); missingFn();</script>"
                   "</body></html>", encoding="utf-8")
    _, console = _chromium(bad.as_uri(), tmp_path, "--dump-dom")
    assert any("boom" in line for line in console)
    assert any("missingFn" in line for line in console)
