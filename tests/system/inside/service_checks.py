"""Runs inside the booted container (system python, stdlib only): drives edgeslm under the real systemd.

Writes one JSON record per check to REPORT, then `systemctl exit`s with 0 when every check held.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

SOCK = "/run/edgeslm/edgeslm.sock"
CONFIG = Path("/etc/edgeslm/edgeslm.toml")
REPORT = Path("/var/tmp/edgeslm-system/report.json")
BUNDLED = sorted(Path("/opt/edgeslm/venv/lib").glob("python3*/site-packages/edgeslm/bundled/intents"))[0]
results: list[dict] = []


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, timeout: float = 60):
        super().__init__("localhost", timeout=timeout)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(SOCK)


def call(method: str, path: str, body: dict | None = None, timeout: float = 60,
         request_id: str | None = None) -> tuple[int, dict]:
    conn = UnixHTTP(timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json", **({"X-Request-Id": request_id} if request_id else {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def fetch_text(path: str, timeout: float = 60) -> tuple[int, str]:
    conn = UnixHTTP(timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def request_ids() -> set[str]:
    """Ids of the request records in the metrics files (LogsDirectory=edgeslm)."""
    records = (json.loads(line) for file in Path("/var/log/edgeslm").glob("*.jsonl")
               for line in file.read_text().splitlines())
    return {r["id"] for r in records if r.get("kind") == "request"}


def classify(text: str = "turn on the kitchen light", model: str = "intents", timeout: float = 60,
             request_id: str | None = None) -> str:
    status, body = call("POST", "/v1/classify", {"model": model, "input": [text]}, timeout, request_id)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body}")
    return body["data"][0]["label"]


def sh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def show(*props: str) -> dict[str, str]:
    out = sh("systemctl", "show", "edgeslm.service", *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(what: str, predicate, timeout_s: float = 60, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def check(name: str):
    def run(fn):
        started = time.monotonic()
        try:
            detail = fn()
            results.append({"check": name, "ok": True, "detail": detail or ""})
        except Exception as exc:  # every failure is recorded, and the remaining checks still run
            results.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
        results[-1]["seconds"] = round(time.monotonic() - started, 2)
        mark = "PASS" if results[-1]["ok"] else "FAIL"
        print(f"[{mark}] {name}: {results[-1]['detail']}", flush=True)
        return fn
    return run


def seconds(span: str) -> float:
    """systemd's timespan text ("5s", "1min 30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    total = 0.0
    for part in span.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units[part[len(number):]]
    return total


def journal(since: str) -> str:
    return sh("journalctl", "-u", "edgeslm.service", "--no-pager", "-o", "cat", "--since", since).stdout


class ClientLoop(threading.Thread):
    """Sends classify requests back to back on fresh connections, counting answers and failures."""

    def __init__(self, model: str = "intents"):
        super().__init__(daemon=True)
        self.model, self.ok, self.failures, self.stop = model, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                classify(model=self.model)
                self.ok += 1
            except Exception as exc:
                self.failures.append(repr(exc))


def main() -> int:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")

    @check("the socket listens before the service runs")
    def _():
        wait_for("edgeslm.socket active", lambda: sh("systemctl", "is-active", "edgeslm.socket").stdout.strip()
                 == "active")
        state = show("ActiveState")["ActiveState"]
        assert state == "inactive", f"edgeslm.service is {state} before any request"
        st = os.stat(SOCK)
        assert stat.S_ISSOCK(st.st_mode), f"{SOCK} is not a socket"
        mode, group = stat.S_IMODE(st.st_mode), sh("stat", "-c", "%G", SOCK).stdout.strip()
        assert (mode, group) == (0o660, "edgeslm"), f"mode {mode:o} group {group}"
        listening = sh("ss", "-xlp").stdout
        assert SOCK in listening and "systemd" in listening, listening
        return f"edgeslm.socket active, service inactive; {SOCK} mode 0660 group edgeslm, held by systemd"

    @check("the first request starts the service and is answered")
    def _():
        label = classify()
        assert label == "lights_on", label
        props = show("ActiveState", "SubState", "StatusText", "MainPID", "Type", "NRestarts", "WatchdogUSec")
        assert props["ActiveState"] == "active" and props["SubState"] == "running", props
        assert "serving intents" in props["StatusText"], props
        return (f"answered {label!r}; systemctl show: ActiveState=active Type={props['Type']} "
                f"WatchdogUSec={props['WatchdogUSec']} StatusText={props['StatusText']!r}")

    @check("a user outside group edgeslm cannot connect")
    def _():
        result = sh("runuser", "-u", "nobody", "--", "curl", "-s", "--unix-socket", SOCK, "http://localhost/health")
        assert result.returncode == 7, f"curl as nobody exited {result.returncode}: {result.stdout}"
        return "curl as nobody: could not connect (socket mode 0660, group edgeslm)"

    @check("watchdog pings keep the service alive; a frozen daemon is restarted")
    def _():
        before = show("MainPID", "NRestarts", "WatchdogUSec")
        watchdog_s = seconds(before["WatchdogUSec"])
        assert watchdog_s > 0, before
        time.sleep(3 * watchdog_s)
        alive = show("MainPID", "NRestarts")
        assert alive == {"MainPID": before["MainPID"], "NRestarts": before["NRestarts"]}, (before, alive)
        os.kill(int(before["MainPID"]), 19)  # SIGSTOP: the event loop stops, so do the pings
        wait_for("a restart after the watchdog fired", lambda: show("NRestarts")["NRestarts"] != before["NRestarts"]
                 and show("ActiveState")["ActiveState"] == "active", timeout_s=10 * watchdog_s + 30)
        assert classify() == "lights_on"
        log = journal(started_at)
        assert "Watchdog timeout" in log or "watchdog" in log.lower(), log[-2000:]
        return (f"same pid {before['MainPID']} after {3 * watchdog_s:g} s (WatchdogSec={watchdog_s:g}s); "
                f"after SIGSTOP systemd logged a watchdog timeout and restarted it (NRestarts "
                f"{before['NRestarts']} -> {show('NRestarts')['NRestarts']})")

    @check("after the process is killed, systemd restarts it and the next request succeeds")
    def _():
        before = show("MainPID", "NRestarts")
        os.kill(int(before["MainPID"]), 9)
        label = classify(timeout=120)  # waits in the socket's queue while systemd restarts the service
        after = show("MainPID", "NRestarts", "ActiveState")
        assert label == "lights_on" and after["MainPID"] != before["MainPID"], (before, after)
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
        return (f"SIGKILL pid {before['MainPID']}; the next request was answered by pid {after['MainPID']} "
                f"(NRestarts {before['NRestarts']} -> {after['NRestarts']})")

    @check("systemctl reload under a running client loop loses no request")
    def _():
        pid = show("MainPID")["MainPID"]
        loops = [ClientLoop("intents"), ClientLoop("slow")]
        for loop in loops:
            loop.start()
        wait_for("the client loops to get going", lambda: all(loop.ok > 3 for loop in loops))
        original = CONFIG.read_text()
        CONFIG.write_text(original.replace(f'path = "{BUNDLED}"\nruntime = "onnx"',
                                           f'path = "{BUNDLED}/model.tflite"\nruntime = "tflite"', 1))
        reload = sh("systemctl", "reload", "edgeslm.service")
        time.sleep(1)
        counts_at_reload = [loop.ok for loop in loops]
        time.sleep(1)
        for loop in loops:
            loop.stop.set()
            loop.join()
        assert reload.returncode == 0, reload.stderr
        failures = [f for loop in loops for f in loop.failures]
        assert not failures, failures[:5]
        assert all(loop.ok > count for loop, count in zip(loops, counts_at_reload)), "requests stopped"
        status, models = call("GET", "/v1/models")
        runtimes = {m["id"]: m.get("runtime") for m in models["data"]}
        assert runtimes["intents"] == "tflite" and runtimes["slow"] == "onnx", runtimes
        props = show("MainPID", "StatusText")
        assert props["MainPID"] == pid and "intents (tflite)" in props["StatusText"], props
        return (f"{sum(loop.ok for loop in loops)} requests, 0 failed, while intents switched onnx -> tflite; "
                f"same pid {pid}; 'slow' kept; STATUS now {props['StatusText']!r}")

    @check("a bad config on reload keeps the old one serving")
    def _():
        good = CONFIG.read_text()
        CONFIG.write_text(good + "\n[server.bogus]\n")
        try:
            reload = sh("systemctl", "reload", "edgeslm.service")
        finally:
            CONFIG.write_text(good)
        assert reload.returncode != 0, "reload of a bad config succeeded"
        assert show("ActiveState")["ActiveState"] == "active" and classify() == "lights_on"
        why = [line for line in journal(started_at).splitlines() if "reload failed" in line]
        assert why, "the journal does not say why the reload failed"
        return f"systemctl reload exited {reload.returncode}; still serving; journal: {why[-1][:160]}"

    @check("systemctl stop drains in-flight requests, writes the buffered metrics records and exits 0")
    def _():
        slow = {}
        status, text = fetch_text("/metrics")
        assert status == 200 and 'edgeslm_requests_total{model="intents"' in text, (status, text[:500])
        assert "drained-at-stop" not in request_ids()

        def request() -> None:
            try:
                slow["label"] = classify(model="slow", request_id="drained-at-stop")
            except Exception as exc:
                slow["error"] = repr(exc)

        pid = show("MainPID")["MainPID"]
        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.3)  # the request is now waiting in the 'slow' model's batch window
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        stop = sh("systemctl", "stop", "edgeslm.service")
        thread.join()
        props = show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
        assert stop.returncode == 0, stop.stderr
        assert slow.get("label") == "lights_on", slow
        assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
        assert props["ExecMainStatus"] == "0", props
        drained = [line for line in journal(since).splitlines() if "draining" in line]
        assert drained and "draining 1 in-flight" in drained[-1], drained
        written = request_ids()
        assert "drained-at-stop" in written, sorted(written)[:20]
        return (f"pid {pid}: {drained[-1]!r}; the request was answered; its request record (and "
                f"{len(written) - 1} others) reached /var/log/edgeslm through the flush at stop (flush interval "
                "1 h); exit status 0, Result=success; GET /metrics answered before the stop")

    @check("after a stop the socket still activates the service (RuntimeDirectoryPreserve=yes)")
    def _():
        assert os.path.exists(SOCK), f"{SOCK} was removed with the runtime directory"
        assert classify() == "lights_on"
        assert show("ActiveState")["ActiveState"] == "active"
        return "the socket file survived the stop and the next request started the service again"

    ansible = Path("/opt/ansible/bin/ansible-playbook")
    if ansible.exists():
        @check("ansible-playbook --check against this host (real systemd) passes, /ready checked over the socket")
        def _():
            wheel = sorted(Path("/wheels").glob("edgeslm-*.whl"))[0]
            inventory = REPORT.parent / "inventory.ini"
            inventory.write_text("[edgeslm]\nlocalhost ansible_connection=local "
                                 "ansible_python_interpreter=/usr/bin/python3\n")
            run = sh(str(ansible), "-i", str(inventory), "--check", "/src/deploy/ansible/site.yml",
                     "-e", f"edgeslm_wheel={wheel}", "-e", "edgeslm_wheels_dir=/wheels", "-e", "edgeslm_board=other")
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
            recap = [line for line in run.stdout.splitlines() if line.startswith("localhost")]
            ready = "The daemon answers /ready" in run.stdout
            assert ready, run.stdout[-2000:]
            return f"exit 0; {recap[-1].split(':', 1)[1].strip() if recap else ''}"

    REPORT.write_text(json.dumps(results, indent=2))
    print(f"{sum(r['ok'] for r in results)} passed, {sum(not r['ok'] for r in results)} failed", flush=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    code = main()
    subprocess.run(["systemctl", "exit", str(code)])
    sys.exit(code)
