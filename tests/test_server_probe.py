"""benchmarks/probe_server.py against a real ``flamediff serve``, in its quick mode: the hostile
probe table (tracker archives, pickles, torch files, tracking uploads, Host headers, half-open
connections, a 57 MiB JSON body) without the tracked-video row, each row within its bounds, so
the script behind PROTOCOL.md's probe figures keeps working (about 15 s, mostly the start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A word of each probe-table row, as the probe names it.
ROWS = ("naming a readable tracker file", "naming a text file", "naming a missing file", "one message",
        "amplifier", "1e9 elements", "billion laughs", "2e6 distinct objects", "zero-stride", "19,999 frames",
        "member name twice", "differing only in case", "a file where a folder is", "300-character",
        "PNG declaring 30000 x 30000", "65535 x 65535 screen", "169-megapixel", "declaring 1,000,000 frames",
        "declaring 40,000 s", "TIFF", "animated GIF", "Host: 127.0.0.1:1@evil.example", "300 half-open",
        "57 MiB JSON body")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the probe reads memory from /proc")
def test_the_quick_probe_of_a_real_server_stays_within_every_bound(tmp_path):
    for module in ("psutil", "httpx", "av", "skimage", "torch"):
        pytest.importorskip(module)
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "probe_server.py"), "--quick", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text()) if out.exists() else []
    assert done.returncode == 0 and rows, done.stdout[-3000:] + done.stderr[-3000:]
    assert all(row["ok"] and row["table"] == "probe" for row in rows), [row for row in rows if not row["ok"]]
    for word in ROWS:
        assert any(word in row["probe"] for row in rows), word
    for row in rows:
        assert not row["answer"].startswith("5"), row
