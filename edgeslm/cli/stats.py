"""`edgeslm stats` and `edgeslm report`: read the metrics records on disk (the daemon need not run)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgeslm.errors import ConfigError, EdgeslmError


def find_metrics_dir(explicit: Path | None, config_path: Path | None) -> Path:
    """--dir, else the config's metrics folder, falling back to /var/log/edgeslm when that has the records."""
    from edgeslm.config import MetricsConfig, load_config
    from edgeslm.metrics.files import record_files
    from edgeslm.metrics.service import SYSTEM_DIR, metrics_dir

    def has_records(folder: Path) -> bool:
        try:
            return bool(record_files(folder))
        except PermissionError:
            return True  # there is something; reading it will say how to get access
        except OSError:
            return False

    if explicit is not None:
        return explicit
    try:
        config = load_config(config_path).metrics
    except ConfigError:
        if config_path is not None:
            raise
        config = MetricsConfig()
    folder = metrics_dir(config)
    if config.dir is None and not has_records(folder) and has_records(SYSTEM_DIR):
        return SYSTEM_DIR
    return folder


def load_stats(args: argparse.Namespace) -> tuple[dict, Path, list[dict]]:
    from edgeslm.metrics.files import read_records, readable_record_files
    from edgeslm.metrics.stats import compute_stats, parse_since

    folder = find_metrics_dir(args.dir, args.config)
    if not readable_record_files(folder):
        raise EdgeslmError(f"no metrics records in {folder}; start the daemon (metrics are on by default) or "
                           "point --dir at the folder (under systemd: /var/log/edgeslm)", code="no_records")
    now = time.time()
    since = parse_since(args.since, now) if args.since else None
    counts: dict[str, int] = {}
    records = list(read_records(folder, since_wall=since, stats=counts))
    stats = compute_stats(records, since_wall=since, model=args.model, now=now)
    stats["dir"] = str(folder)
    stats.update(counts)
    if args.model is not None and args.model not in stats["recorded_models"]:
        note = unmatched_model_note(args.model, stats["recorded_models"], args.since)
        print(f"edgeslm {getattr(args, 'command', 'stats')}: {note}", file=sys.stderr)
    return stats, folder, records


def unmatched_model_note(model: str, recorded: list[str], since: str | None) -> str:
    """Why --model left nothing: an empty table alone reads as "that model was never asked anything"."""
    window = f" since {since}" if since else ""
    others = f"models with records: {', '.join(recorded)}" if recorded else "no model has any"
    return f"no request records match model {model!r}{window}; {others}"


def _fmt(value: object, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _request_row(name: str, s: dict) -> list[str]:
    rate = f"{s['error_rate'] * 100:.1f}%" if s["error_rate"] is not None else "-"
    return [name, str(s["requests"]), rate, _fmt(s["throughput_rps"], ".2f"), _fmt(s["p50_ms"], ".2f"),
            _fmt(s["p95_ms"], ".2f"), _fmt(s["p99_ms"], ".2f"), _mj(s["j_per_inference"]),
            _mj(s["marginal_j_per_inference"])]


def _mj(joules: float | None) -> str:
    return "-" if joules is None else f"{joules * 1000:.3g}"


def render(stats: dict) -> str:
    window = stats["window"]
    hours = window["seconds"] / 3600
    lines = [f"edgeslm stats: {window['from'] or '-'} .. {window['to'] or '-'} ({hours:.2f} h) from {stats['dir']}"
             + (f", {stats['bad_lines']} torn line(s) skipped" if stats.get("bad_lines") else ""), ""]
    header = ["MODEL", "REQUESTS", "ERRORS", "REQ/S", "P50 MS", "P95 MS", "P99 MS", "mJ/INF", "MARGINAL mJ/INF"]
    rows = [header] + [_request_row(name, s) for name, s in stats["models"].items()]
    if len(stats["models"]) != 1:
        rows.append(_request_row("(all)", stats["overall"]))
    lines += [_table(rows), ""]
    first = [f"{name} p50 {s['first_token_p50_ms']:.1f} ms, p95 {s['first_token_p95_ms']:.1f} ms"
             for name, s in stats["models"].items() if s.get("first_token_p50_ms") is not None]
    if first:
        lines.append("first token (generation; P50 MS above is the whole answer): " + "; ".join(first))
    errors = {k: v for k, v in stats["overall"]["statuses"].items() if k != "ok"}
    if errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    p = stats["power"]
    source = ", ".join(p["sources"]) or "no samples"
    estimated = " (an estimate from CPU load, not a measurement)" if "estimated" in p["sources"] else ""
    hottest = f"hottest {p['max_temp_c']:.1f} C" if p["max_temp_c"] is not None else "no temperature sensor"
    lines.append(f"power: {source}{estimated}; mean {_fmt(p['mean_w'], '.2f')} W, idle {_fmt(p['idle_w'], '.2f')} W, "
                 f"peak {_fmt(p['max_w'], '.2f')} W; {hottest}"
                 + (f"; supply down to {p['min_supply_v']:.2f} V" if p["min_supply_v"] is not None else ""))
    t = p["throttling"]
    boot = f" (since boot: {', '.join(t['since_boot'])})" if t["since_boot"] else ""
    lines.append(f"throttling: {t['episodes']} episode(s), {', '.join(t['flags'])}{boot}" if t["episodes"]
                 else f"throttling: none{boot}")
    lines.append("mJ/INF: millijoules per inference (one text or row); MARGINAL subtracts the idle power over the run.")
    if stats["hours"]:
        lines += ["", "per hour (UTC)"]
        rows = [["HOUR", "REQUESTS", "ERRORS", "REQ/S", "P50 MS", "P95 MS", "P99 MS", "mJ/INF", "MEAN W", "MAX C",
                 "THROTTLED"]]
        for h in stats["hours"]:
            row = _request_row(h["hour"][:13].replace("T", " ") + ":00", h)[:8]
            rows.append(row + [_fmt(h["mean_w"], ".2f"), _fmt(h["max_temp_c"], ".1f"), str(h["throttling_episodes"])])
        lines.append(_table(rows))
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    stats, _, _ = load_stats(args)
    print(json.dumps(stats, indent=2) if args.json else render(stats))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from edgeslm.metrics.report import write_report

    stats, _, records = load_stats(args)
    out = write_report(args.out, stats, records)
    print(f"wrote {out}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="WHEN", help="only records after this: 30m, 1h, 2d, or 2025-01-31T08:00")
    parser.add_argument("--model", metavar="NAME", help="only this model's requests")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="records folder (default: metrics.dir, $LOGS_DIRECTORY, ./run/metrics, /var/log/edgeslm)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="config file to read metrics.dir from")


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    stats = sub.add_parser(
        "stats", help="latency, throughput, errors, power and energy from the records on disk",
        formatter_class=FORMATTER,
        description="Summarise the daemon's request and power records: p50/p95/p99 latency, throughput,\n"
                    "error rate, mean and idle watts, joules per inference (total and marginal over idle)\n"
                    "and throttling, per model and per hour. Reads files only; the daemon need not run.",
        epilog="examples:\n"
               "  edgeslm stats\n"
               "  edgeslm stats --since 1h --model intents\n"
               "  edgeslm stats --since 2025-01-31T08:00 --json | jq .overall\n"
               "  edgeslm stats --dir /var/log/edgeslm",
    )
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    stats.set_defaults(func=cmd_stats)

    report = sub.add_parser(
        "report", help="plots of latency, throughput, power, temperature and energy (HTML or PNG)",
        formatter_class=FORMATTER,
        description="Draw the records as plots: latency and throughput over time, power and temperature\n"
                    "over time, joules per inference per model. .html gives one self-contained page with\n"
                    "the plots and the stats table; .png gives the plots alone. Needs matplotlib:\n"
                    "  pip install 'edgeslm[report]'",
        epilog="examples:\n"
               "  edgeslm report --out report.html\n"
               "  edgeslm report --since 6h --out last6h.png",
    )
    _common(report)
    report.add_argument("--out", type=Path, required=True, metavar="FILE", help="report.html or report.png")
    report.set_defaults(func=cmd_report)
