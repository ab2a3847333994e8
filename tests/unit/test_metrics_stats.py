"""`edgeslm stats` and `edgeslm report` on a generated log with known answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeslm.cli import main
from edgeslm.errors import BadInputError
from edgeslm.metrics.files import read_records
from edgeslm.metrics.stats import compute_stats, parse_since

from .metrics_log import write_known_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("metrics")
    start = (time.time() // 3600 - 3) * 3600  # three whole hours ago, so --since works relative to now
    write_known_log(folder, start)
    return folder, start


def test_stats_known_answers(log_dir):
    folder, start = log_dir
    stats = compute_stats(read_records(folder), since_wall=start)
    assert stats["window"]["seconds"] == 7199
    a, b = stats["models"]["a"], stats["models"]["b"]
    assert (a["requests"], a["ok"], a["errors"], a["statuses"]) == (110, 100, 10, {"ok": 100, "overloaded": 10})
    assert a["error_rate"] == round(10 / 110, 4)
    assert (a["p50_ms"], a["p95_ms"], a["p99_ms"]) == (50.5, 95.05, 99.01)  # of 1..100 ms, overloaded left out
    assert a["throughput_rps"] == round(110 / 7199, 3)
    assert a["j_per_inference"] == 0.05
    assert a["marginal_j_per_inference"] == pytest.approx(0.05 - 2.0 * 0.010)  # idle 2 W over a 10 ms run
    assert (b["inferences"], b["p50_ms"]) == (100, 51.0)
    assert b["j_per_inference"] == pytest.approx(0.1 / 2)  # per row
    assert b["marginal_j_per_inference"] == pytest.approx((0.1 - 2.0 * 0.020 * 2 / 4) / 2)
    overall = stats["overall"]
    assert (overall["requests"], overall["errors"], overall["inferences"]) == (160, 10, 200)
    power = stats["power"]
    assert (power["mean_w"], power["idle_w"], power["max_w"], power["max_temp_c"]) == (4.0, 2.0, 5.0, 60.0)
    assert power["throttling"] == {"episodes": 2, "samples": 4,
                                   "flags": ["soft_temp_limit", "throttled", "under_voltage"],
                                   "since_boot": ["under_voltage"]}
    first, second = stats["hours"]
    assert (first["requests"], first["throughput_rps"], first["mean_w"], first["max_temp_c"]) == (
        100, round(100 / 3600, 3), 3.0, 50.0)
    assert (first["throttling_episodes"], second["throttling_episodes"]) == (2, 0)
    assert (second["requests"], second["errors"], second["mean_w"]) == (60, 10, 5.0)
    assert second["throughput_rps"] == round(60 / 3599, 3)


def test_since_and_model_filters(log_dir):
    folder, start = log_dir
    late = compute_stats(read_records(folder), since_wall=start + 3600, model="a")
    assert list(late["models"]) == ["a"] and late["overall"]["requests"] == 10 and late["overall"]["ok"] == 0
    assert late["overall"]["p50_ms"] is None and late["power"]["mean_w"] == 5.0


def test_parse_since():
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("1h", 10_000.0) == 6400.0
    assert parse_since("2d", 200_000.0) == 200_000.0 - 172_800
    assert parse_since("2025-01-31T08:00", 0) == parse_since("2025-01-31T08:00:00Z", 0) == 1738310400.0
    with pytest.raises(BadInputError, match="30m, 1h"):
        parse_since("yesterday", 0)


def test_cli_stats_json_and_table(log_dir, capsys):
    folder, start = log_dir
    assert main(["stats", "--dir", str(folder), "--json", "--since", "4h"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["overall"]["requests"] == 160 and stats["bad_lines"] == 0 and stats["files"] >= 2
    assert main(["stats", "--dir", str(folder), "--model", "b"]) == 0
    text = capsys.readouterr().out
    assert "MODEL" in text and "P99 MS" in text and "MARGINAL mJ/INF" in text
    row = next(line for line in text.splitlines() if line.startswith("b "))
    assert row.split()[:3] == ["b", "50", "0.0%"] and row.split()[-2:] == ["50", "40"]  # mJ per inference
    assert "throttling: 2 episode(s), soft_temp_limit, throttled, under_voltage (since boot: under_voltage)" in text
    assert "per hour (UTC)" in text and "idle 2.00 W" in text


def test_stats_give_generation_its_time_to_first_token(tmp_path, capsys):
    import orjson

    from edgeslm.metrics.files import JsonlWriter

    from .metrics_log import iso

    start = (time.time() // 3600 - 1) * 3600
    records = [{"kind": "request", "ts": iso(start + i), "model": "smol", "task": "generate", "status": "ok",
                "rows": 1, "batch": 1, "run_ms": 900.0, "total_ms": 1000.0, "tokens_out": 30,
                "first_token_ms": float(10 * (i + 1))} for i in range(20)]  # 10, 20, .. 200 ms
    records.append({"kind": "request", "ts": iso(start + 30), "model": "smol", "task": "generate",
                    "status": "cancelled", "rows": 1, "total_ms": 5.0, "first_token_ms": 1.0})  # left out
    records.append({"kind": "request", "ts": iso(start + 31), "model": "intents", "task": "classify",
                    "status": "ok", "rows": 1, "batch": 1, "run_ms": 0.1, "total_ms": 0.3})
    writer = JsonlWriter(tmp_path)
    writer.write([orjson.dumps(r) for r in records])
    writer.close()
    stats = compute_stats(read_records(tmp_path))
    smol, intents = stats["models"]["smol"], stats["models"]["intents"]
    assert (smol["first_token_p50_ms"], smol["first_token_p95_ms"]) == (105.0, 190.5)
    assert smol["p50_ms"] == 1000.0 and intents["first_token_p50_ms"] is None
    assert main(["stats", "--dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "first token (generation; P50 MS above is the whole answer): smol p50 105.0 ms, p95 190.5 ms" in text
    assert "intents p50" not in text
    pytest.importorskip("matplotlib")
    assert main(["report", "--dir", str(tmp_path), "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", "--dir", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<th>first token p50 ms</th>" in page and "<td>105.0</td>" in page and "<td>190.5</td>" in page


def test_report_bins_suit_the_window():
    from edgeslm.metrics.report import _bin_width

    # About 120 bins at most: a short test run still gets points to draw, a week stays readable.
    assert [_bin_width(s) for s in (5, 100, 600, 7199, 86400, 7 * 86400)] == [1, 1, 5, 60, 900, 7200]


def test_cli_stats_for_a_model_without_records_says_so_and_names_those_with(log_dir, capsys):
    folder, _ = log_dir
    assert main(["stats", "--dir", str(folder), "--model", "nope"]) == 0
    out, err = capsys.readouterr()
    assert "edgeslm stats: no request records match model 'nope'; models with records: a, b" in err
    assert "MODEL" in out  # the (empty) table still prints, for scripts that read it
    assert main(["stats", "--dir", str(folder), "--model", "b", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["recorded_models"] == ["a", "b"]


def test_cli_stats_without_records_says_where_it_looked(tmp_path, capsys):
    assert main(["stats", "--dir", str(tmp_path)]) == 1
    assert f"no metrics records in {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["report.png", "report.html"])
def test_report_writes_png_and_html(log_dir, tmp_path, capsys, name):
    folder, _ = log_dir
    out = tmp_path / name
    assert main(["report", "--dir", str(folder), "--out", str(out)]) == 0
    data = out.read_bytes()
    if name.endswith(".png"):
        assert data.startswith(b"\x89PNG") and len(data) > 50_000
    else:
        text = data.decode()
        assert '<img alt="latency' in text and "data:image/png;base64," in text and "<td>a</td>" in text


def test_report_refuses_other_extensions(log_dir, tmp_path, capsys):
    assert main(["report", "--dir", str(log_dir[0]), "--out", str(tmp_path / "r.pdf")]) == 1
    assert ".html or .png" in capsys.readouterr().err


def test_report_without_matplotlib_names_the_extra(log_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", "--dir", str(log_dir[0]), "--out", str(tmp_path / "r.png")]) == 1
    assert "pip install 'edgeslm[report]'" in capsys.readouterr().err


def test_daemon_and_stats_paths_do_not_import_matplotlib_or_report():
    code = ("import sys, edgeslm.server.daemon, edgeslm.cli, edgeslm.cli.stats; edgeslm.cli.build_parser();"
            "print(','.join(m for m in ('matplotlib', 'edgeslm.metrics.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
