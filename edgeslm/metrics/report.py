"""`edgeslm report`: the records drawn with matplotlib (the optional `report` extra) to PNG or HTML."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm.errors import BadInputError, MissingExtraError
from edgeslm.metrics.stats import has_first_token

BIN_WIDTHS_S = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import dates
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("edgeslm report draws with matplotlib, which is not installed: "
                                "pip install 'edgeslm[report]'") from None
    return Figure, dates


def _bin_width(span_s: float) -> int:
    return next((w for w in BIN_WIDTHS_S if span_s / w <= 120), BIN_WIDTHS_S[-1])


def _times(walls: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(w, UTC) for w in walls]


def _binned(walls: np.ndarray, values: np.ndarray, width: int, start: float, end: float,
            stat: Any) -> tuple[np.ndarray, ...]:
    """Centres of the bins from start to end, and `stat(values)` per bin (NaN where a bin is empty)."""
    index = ((walls - start) // width).astype(int)
    count = int((end - start) // width) + 1
    centres = start + (np.arange(count) + 0.5) * width
    out = np.full(count, np.nan)
    for i in np.unique(index):
        out[i] = stat(values[index == i])
    return centres, out


def draw(stats: dict, records: list[dict]) -> bytes:
    """The four panels as one PNG."""
    Figure, dates = _matplotlib()
    requests = [r for r in records if r.get("kind") == "request" and "_wall" in r
                and (stats.get("model") is None or r.get("model") == stats["model"])]
    samples = [r for r in records if r.get("kind") == "sample" and "_wall" in r]
    walls = [r["_wall"] for r in requests + samples]
    if not walls:
        raise BadInputError("no records in that window to draw; widen --since")
    start, end = min(walls), max(walls)
    width = _bin_width(max(end - start, 1.0))
    fig = Figure(figsize=(11, 12.5), dpi=110, layout="constrained")
    grid = fig.add_gridspec(4, 1, height_ratios=[1.1, 0.9, 1.0, 0.8])
    lat = fig.add_subplot(grid[0])
    thr = fig.add_subplot(grid[1], sharex=lat)
    pwr = fig.add_subplot(grid[2], sharex=lat)
    bars = fig.add_subplot(grid[3])
    first, last = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    tail = last.strftime("%H:%M:%S" if first.date() == last.date() else "%Y-%m-%d %H:%M:%S")
    fig.suptitle(f"edgeslm, {first:%Y-%m-%d %H:%M:%S} to {tail} UTC", fontsize=13, fontweight="bold")

    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in requests:
        by_model[r.get("model", "?")].append(r)
    for color, (model, rs) in zip(COLORS * 4, sorted(by_model.items())):
        ok = [r for r in rs if r.get("status") == "ok" and "total_ms" in r]
        if ok:
            w = np.array([r["_wall"] for r in ok])
            ms = np.array([r["total_ms"] for r in ok])
            centres, p50 = _binned(w, ms, width, start, end, lambda v: np.percentile(v, 50))
            _, p95 = _binned(w, ms, width, start, end, lambda v: np.percentile(v, 95))
            lat.plot(_times(centres), p50, color=color, lw=2, marker="o", ms=3, label=f"{model} p50")
            lat.plot(_times(centres), p95, color=color, lw=1.2, ls="--", label=f"{model} p95")
            first = [r for r in ok if has_first_token(r)]
            if first:  # a generation model: how long before its answers start
                first_walls = np.array([r["_wall"] for r in first])
                first_ms = np.array([r["first_token_ms"] for r in first])
                centres, f50 = _binned(first_walls, first_ms, width, start, end, lambda v: np.percentile(v, 50))
                lat.plot(_times(centres), f50, color=color, lw=1.2, ls=":", marker="^", ms=3,
                         label=f"{model} first token p50")
        w = np.array([r["_wall"] for r in rs])
        centres, counts = _binned(w, np.ones(len(rs)), width, start, end, np.sum)
        thr.plot(_times(centres), np.nan_to_num(counts) / width, color=color, lw=2, drawstyle="steps-mid",
                 label=model)
        bad = [r["_wall"] for r in rs if r.get("status") != "ok"]
        if bad:
            centres, errs = _binned(np.array(bad), np.ones(len(bad)), width, start, end, np.sum)
            thr.bar(_times(centres), errs / width, width=width / 86400 * 0.8, color="#d62728", alpha=0.6,
                    label=f"{model} errors")
    lat.set_ylabel("latency (ms)")
    lat.set_title(f"Latency per {width:g} s bin", loc="left")
    if requests and max(r.get("total_ms", 0) for r in requests) > 20 * max(
            min(r.get("total_ms", 1) for r in requests), 0.01):
        lat.set_yscale("log")
    thr.set_ylabel("requests / s")
    thr.set_title("Throughput", loc="left")
    rates = [y for line in thr.get_lines() for y in line.get_ydata() if y > 0]
    if rates and max(rates) > 30 * min(rates):  # a burst would flatten the quiet hours to zero
        thr.set_yscale("log")
        thr.set_ylim(bottom=min(rates) / 2)
    else:
        thr.set_ylim(bottom=0)
    _power_panel(pwr, samples, stats)
    _energy_panel(bars, stats)
    span_s = end - start
    shape = "%H:%M:%S" if span_s < 3600 else "%H:%M" if span_s < 2 * 86400 else "%m-%d %H:%M"
    for ax in (lat, thr, pwr):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, ncols=4, framealpha=0.8)
        if span_s < 60:  # ticks on whole seconds: finer ones would all read the same second
            ax.xaxis.set_major_locator(dates.SecondLocator(interval=max(1, round(span_s / 8)), tz=UTC))
        ax.xaxis.set_major_formatter(dates.DateFormatter(shape, tz=UTC))
    lat.tick_params(labelbottom=False)
    thr.tick_params(labelbottom=False)
    pwr.set_xlabel("time (UTC)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _power_panel(ax: Any, samples: list[dict], stats: dict) -> None:
    power = stats["power"]
    ax.set_title("Power and temperature", loc="left")
    with_w = [s for s in samples if "w" in s]
    if with_w:
        times = _times(np.array([s["_wall"] for s in with_w]))
        source = ", ".join(power["sources"])
        ax.plot(times, [s["w"] for s in with_w], color="#1f77b4", lw=1.8, label=f"power ({source})")
        if power["idle_w"] is not None:
            ax.axhline(power["idle_w"], color="#1f77b4", ls=":", lw=1.2, label=f"idle {power['idle_w']:.2f} W")
        ax.set_ylim(bottom=0, top=max(s.get("w_max", s["w"]) for s in with_w) * 1.25)
    else:
        ax.text(0.5, 0.5, "no power samples", transform=ax.transAxes, ha="center", color="gray")
    ax.set_ylabel("watts")
    hot = [s for s in samples if "temp_c" in s]
    if hot:
        twin = ax.twinx()
        twin.plot(_times(np.array([s["_wall"] for s in hot])), [s["temp_c"] for s in hot], color="#d62728", lw=1.5,
                  label="temperature")
        twin.set_ylabel("°C", color="#d62728")
        twin.tick_params(axis="y", colors="#d62728")
        twin.legend(loc="upper right", fontsize=8)
    throttled = [s for s in samples if int(s.get("throttled", 0)) & 0xF]
    for i, s in enumerate(throttled):
        span = max(s.get("span_s", 10), 1)
        ax.axvspan(datetime.fromtimestamp(s["_wall"] - span, UTC), datetime.fromtimestamp(s["_wall"], UTC),
                   color="orange", alpha=0.25, label="throttled" if i == 0 else None)


def _energy_panel(ax: Any, stats: dict) -> None:
    models = {name: s for name, s in stats["models"].items() if s["j_per_inference"] is not None}
    ax.set_title("Energy per inference", loc="left")
    if not models:
        ax.text(0.5, 0.5, "no energy in these records (no power source)", transform=ax.transAxes, ha="center",
                color="gray")
        ax.set_axis_off()
        return
    names = list(models)
    x = np.arange(len(names))
    total = [models[n]["j_per_inference"] * 1000 for n in names]
    # No idle power in the window (no idle sample yet): no marginal bar, rather than one at zero.
    known = [models[n]["marginal_j_per_inference"] is not None for n in names]
    marginal = [(models[n]["marginal_j_per_inference"] or 0) * 1000 for n in names]
    ax.bar(x - 0.2, total, 0.4, color="#1f77b4", label="total")
    if any(known):
        ax.bar((x + 0.2)[known], np.array(marginal)[known], 0.4, color="#2ca02c", label="marginal (over idle)")
    for xs, values, shown in ((x - 0.2, total, [True] * len(names)), (x + 0.2, marginal, known)):
        for xi, v, show in zip(xs, values, shown):
            ax.annotate(f"{v:.2f}" if show else "marginal: no idle\nsample yet", (xi, v), ha="center",
                        va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points",
                        color="black" if show else "gray")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(x, names)
    ax.set_ylabel("mJ / inference")
    ax.set_ylim(bottom=min(0, *marginal) * 1.2, top=max(total) * 1.25)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def _html(stats: dict, png: bytes) -> str:
    esc = html.escape
    cols = [("requests", "requests", ""), ("errors", "error_rate", "%"), ("req/s", "throughput_rps", ".2f"),
            ("p50 ms", "p50_ms", ".2f"), ("p95 ms", "p95_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"),
            ("J/inference", "j_per_inference", ".4f"), ("marginal J", "marginal_j_per_inference", ".4f")]
    if any(s.get("first_token_p50_ms") is not None for s in stats["models"].values()):  # a generation model
        cols[6:6] = [("first token p50 ms", "first_token_p50_ms", ".1f"),
                     ("first token p95 ms", "first_token_p95_ms", ".1f")]

    def cell(value: Any, spec: str) -> str:
        if value is None:
            return "–"
        return f"{value * 100:.1f}%" if spec == "%" else format(value, spec)

    def table(rows: dict[str, dict], first: str) -> str:
        head = "".join(f"<th>{esc(c)}</th>" for c in [first] + [c[0] for c in cols])
        body = "".join(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{cell(s[k], f)}</td>" for _, k, f in cols)
                       + "</tr>" for name, s in rows.items())
        return f"<table><tr>{head}</tr>{body}</table>"

    p, window = stats["power"], stats["window"]
    hours = {h["hour"].replace("T", " ")[:16]: h for h in stats["hours"]}
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeslm report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f4f4f4}}img{{max-width:100%}}</style></head><body>
<h1>edgeslm report</h1>
<p>{esc(str(window['from']))} .. {esc(str(window['to']))} (UTC), from <code>{esc(stats['dir'])}</code></p>
<h2>Per model</h2>{table({**stats['models'], '(all)': stats['overall']}, 'model')}
<p>Power: {esc(', '.join(p['sources']) or 'no samples')}; mean {cell(p['mean_w'], '.2f')} W, idle
{cell(p['idle_w'], '.2f')} W, hottest {cell(p['max_temp_c'], '.1f')} °C; throttling episodes:
{p['throttling']['episodes']} {esc(', '.join(p['throttling']['flags']))}.
J/inference is energy per inference (one text or row); marginal subtracts idle power over the run.</p>
<img alt="latency, throughput, power, temperature and energy plots" src="data:image/png;base64,{image}">
<h2>Per hour</h2>{table(hours, 'hour (UTC)')}
</body></html>
"""


def write_report(out: Path, stats: dict, records: list[dict]) -> Path:
    """Write `out` as .png (the plots) or .html (plots and tables in one file)."""
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise BadInputError(f"--out {out}: give a .html or .png file name", param="out")
    png = draw(stats, records)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        out.write_bytes(png)
    else:
        out.write_text(_html(stats, png), encoding="utf-8")
    return out
