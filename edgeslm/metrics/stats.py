"""Summaries of the records on disk: latency percentiles, throughput, errors, power, energy, throttling."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

from edgeslm.errors import BadInputError
from edgeslm.hw.sensors import THROTTLE_NOW_MASK, decode_throttled

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """"90s", "30m", "1h", "2d", "1w" before `now`, or an ISO date/time (UTC unless it says otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if match:
        return now - float(match.group(1)) * _UNITS_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(f"--since {text!r}: give a duration like 30m, 1h, 2d or a time like 2025-01-31T08:00",
                            param="since") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def wall_of(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def has_first_token(record: dict) -> bool:
    """Whether a request record carries a usable time to first token (a generation's)."""
    return isinstance(record.get("first_token_ms"), int | float)


def summarise_requests(requests: list[dict], seconds: float, idle_w: float | None) -> dict:
    """Counts, error rate and throughput over all requests; latency (and, for generation, the time to the first
    token) and energy over the successful ones."""
    statuses = Counter(r.get("status", "?") for r in requests)
    nan = float("nan")
    # One row per request: ok, total_ms, rows, batch rows, run_ms, energy_j (NaN where absent).
    table = np.array([(r.get("status") == "ok", r.get("total_ms", nan), r.get("rows", 1), r.get("batch") or 1,
                       r.get("run_ms", 0.0), r.get("energy_j", nan)) for r in requests], dtype=float).reshape(-1, 6)
    ok = table[table[:, 0] == 1]
    latency = ok[:, 1][~np.isnan(ok[:, 1])]
    p50, p95, p99 = np.percentile(latency, [50, 95, 99]) if latency.size else (None, None, None)
    with_energy = ok[~np.isnan(ok[:, 5])]
    energy_rows = with_energy[:, 2].sum()
    energy = with_energy[:, 5].sum()
    j_per = energy / energy_rows if energy_rows else None
    marginal = None
    if energy_rows and idle_w is not None:
        idle_j = (idle_w * with_energy[:, 4] / 1000 * with_energy[:, 2] / with_energy[:, 3]).sum()
        marginal = (energy - idle_j) / energy_rows
    first = [r["first_token_ms"] for r in requests if r.get("status") == "ok" and has_first_token(r)]
    first_p50, first_p95 = np.percentile(first, [50, 95]) if first else (None, None)
    n, n_ok, rows = len(requests), len(ok), int(ok[:, 2].sum())
    return {
        "requests": n, "ok": n_ok, "errors": n - n_ok,
        "error_rate": _round((n - n_ok) / n, 4) if n else None,
        "statuses": dict(sorted(statuses.items())),
        "inferences": rows,
        "throughput_rps": _round(n / seconds, 3) if seconds > 0 else None,
        "inferences_per_s": _round(rows / seconds, 3) if seconds > 0 else None,
        "p50_ms": _round(p50, 3), "p95_ms": _round(p95, 3), "p99_ms": _round(p99, 3),
        "first_token_p50_ms": _round(first_p50, 3), "first_token_p95_ms": _round(first_p95, 3),
        "energy_j": _round(energy, 6) if len(with_energy) else None,
        "j_per_inference": _round(j_per, 6),
        "marginal_j_per_inference": _round(marginal, 6),
    }


def summarise_power(samples: list[dict]) -> dict:
    """Mean and idle watts (weighted by ticks), hottest temperature, lowest supply voltage, throttling."""
    watts = [(s["w"], s.get("n", 1)) for s in samples if "w" in s]
    idle = [s["idle_w"] for s in samples if "idle_w" in s]
    temps = [s["temp_c"] for s in samples if "temp_c" in s]
    supply = [s["supply_v_min"] for s in samples if "supply_v_min" in s]
    episodes, throttled_samples, flags_now, previous = 0, 0, set(), 0
    since_boot: list[str] = []
    for s in samples:
        if "throttled" not in s:
            continue
        bits = int(s["throttled"])
        now = bits & THROTTLE_NOW_MASK
        if now:
            throttled_samples += 1
            flags_now.update(decode_throttled(bits)["now"])
            if not previous:
                episodes += 1
        previous = now
        since_boot = decode_throttled(bits)["since_boot"]
    weight = sum(n for _, n in watts)
    return {
        "sources": sorted({s.get("source", "?") for s in samples}),
        "samples": len(samples),
        "mean_w": _round(sum(w * n for w, n in watts) / weight, 3) if weight else None,
        "idle_w": _round(sum(idle) / len(idle), 3) if idle else None,
        "max_w": _round(max((s.get("w_max", s["w"]) for s in samples if "w" in s), default=None), 3),
        "max_temp_c": _round(max(temps), 1) if temps else None,
        "min_supply_v": _round(min(supply), 3) if supply else None,
        "throttling": {"episodes": episodes, "samples": throttled_samples, "flags": sorted(flags_now),
                       "since_boot": since_boot},
    }


def compute_stats(records: Iterable[dict], *, since_wall: float | None = None, model: str | None = None,
                  now: float | None = None) -> dict:
    """The whole summary: overall, per model and per UTC hour, plus power and throttling.

    `recorded_models` names every model with request records in the window, whatever `model` is, so a
    filter that matched nothing can say which names would have matched.
    """
    requests, samples = [], []
    recorded: set[str] = set()
    for record in records:
        ts = record.get("ts")
        if not isinstance(ts, str):
            continue
        try:
            record["_wall"] = wall_of(ts)
        except ValueError:
            continue
        if since_wall is not None and record["_wall"] < since_wall:
            continue
        if record.get("kind") == "request":
            recorded.add(str(record.get("model", "?")))
            if model is None or record.get("model") == model:
                requests.append(record)
        elif record.get("kind") == "sample":
            samples.append(record)
    walls = [r["_wall"] for r in requests + samples]
    start = since_wall if since_wall is not None else (min(walls) if walls else None)
    end = max(walls) if walls else (now if now is not None else time.time())
    seconds = max(0.0, end - start) if start is not None else 0.0
    power = summarise_power(samples)
    idle_w = power["idle_w"]
    by_model: dict[str, list[dict]] = defaultdict(list)
    by_hour: dict[str, list[dict]] = defaultdict(list)
    samples_by_hour: dict[str, list[dict]] = defaultdict(list)
    for r in requests:
        by_model[r.get("model", "?")].append(r)
        by_hour[r["ts"][:13]].append(r)
    for s in samples:
        samples_by_hour[s["ts"][:13]].append(s)
    hours = []
    for hour in sorted(set(by_hour) | set(samples_by_hour)):
        hour_start = datetime.fromisoformat(hour + ":00:00+00:00").timestamp()
        covered = min(end, hour_start + 3600) - max(start if start is not None else hour_start, hour_start)
        row = {"hour": hour + ":00Z", **summarise_requests(by_hour[hour], covered, idle_w)}
        hour_power = summarise_power(samples_by_hour[hour])
        row.update(mean_w=hour_power["mean_w"], max_temp_c=hour_power["max_temp_c"],
                   throttling_episodes=hour_power["throttling"]["episodes"])
        hours.append(row)
    iso = (lambda w: datetime.fromtimestamp(w, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) if walls else (lambda w: None)
    return {
        "window": {"from": iso(start) if start is not None else None, "to": iso(end), "seconds": round(seconds, 3)},
        "model": model,
        "recorded_models": sorted(recorded),
        "overall": summarise_requests(requests, seconds, idle_w),
        "models": {name: summarise_requests(rs, seconds, idle_w) for name, rs in sorted(by_model.items())},
        "hours": hours,
        "power": power,
    }
