"""The report in a real headless browser (Debian chromium): the page loads offline, its inline
self-check script runs, every embedded figure decodes, the tables have the expected cells and no
network resource was requested."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from reproduce.report.html import selfcheck_from_dom

CHROMIUM = shutil.which("chromium")


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after load (scripts run) from headless chromium with a fresh profile, offline."""
    profile.mkdir()
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@needs_chromium
def test_report_page_renders_in_headless_chromium(fake_report, tmp_path):
    fake_study, _, paths = fake_report
    dom = dump_dom(paths[-1], tmp_path / "profile")
    assert "<h1>Study" in dom and "Table 1" in dom, dom[:500]
    check = selfcheck_from_dom(dom)
    assert check is not None, "the page's self-check script did not run:\n" + dom[-1500:]
    n_png = sum(p.suffix == ".png" for p in paths)
    assert check["images"] == n_png == 12 and check["images_decoded"] == n_png, check
    assert all(w > 0 for w in check["image_widths"])
    assert check["external_resources"] == 0 and check["status"] == "ok"
    # Table 1: 2 datasets x 2 groups rows; dataset, group, params + 4 accuracy columns + 2 DP-gap columns
    for metric in ("val_acc", "test_acc"):
        assert check["tables"][f"table-{metric}"] == {"rows": 4, "cells": 4 * (3 + 4 + 2)}
    assert check["tables"]["privacy"]["rows"] == len(fake_study.cells()) == 32
    assert check["tables"]["provenance"]["rows"] == 32


@needs_chromium
def test_report_self_check_detects_a_broken_image_and_csp_blocks_fetches(fake_report, tmp_path):
    """The checks are not vacuous: a corrupt figure counts as not decoded, and an injected external
    image is blocked by the page's Content-Security-Policy - a server on 127.0.0.1 never sees it."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = fake_report[2][-1].read_text(encoding="utf-8")
        page = re.sub(
            r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,iVBORw0KGgoAAAA="', page, count=1
        )
        url = f"http://127.0.0.1:{server.server_address[1]}/external.png"
        page = page.replace("<h2>Table 1</h2>", f'<h2>Table 1</h2><img src="{url}" alt="x">')
        broken = tmp_path / "broken.html"
        broken.write_text(page, encoding="utf-8")
        check = selfcheck_from_dom(dump_dom(broken, tmp_path / "profile"))
    finally:
        server.shutdown()
        server.server_close()
    assert check is not None and check["status"] == "failed"
    assert check["images"] == 13 and check["images_decoded"] == 11
    assert requests == []
