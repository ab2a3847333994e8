"""`edgeslm gpio`, `edgeslm listen` and `edgeslm voice`: the hardware edge of a running daemon."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeslm.cli.query import _client, _socket_arg
from edgeslm.events import KINDS, parse_kinds

EX_NOINPUT = 66  # sysexits: an input file is missing or unreadable (2 already means "nothing matched")


def cmd_gpio_press(args: argparse.Namespace) -> int:
    answer = _client(args).post(f"/v1/gpio/{args.pin}/press", {"hold_ms": args.hold_ms})
    print(json.dumps(answer) if args.json else f"pressed pin {answer['pin']} for {answer['hold_ms']:g} ms")
    return 0


def cmd_gpio_status(args: argparse.Namespace) -> int:
    answer = _client(args).get("/v1/gpio")
    if args.json or answer.get("backend") is None:
        print(json.dumps(answer, indent=2) if args.json else "no GPIO backend is running")
        return 0
    extra = f" ({answer['label']})" if answer.get("label") else ""
    print(f"backend {answer['backend']}{extra}")
    for t in answer["triggers"]:
        print(f"  trigger pin {t['pin']:<3} {t['name']:<14} {'PRESSED' if t['pressed'] else 'up'} (level {t['level']})")
    for o in answer["outputs"]:
        print(f"  output  pin {o['pin']:<3} {o['name']:<14} {'ON' if o['on'] else 'off'} (level {o['level']})")
    return 0


def describe(kind: str, event: dict[str, Any]) -> str:
    """One readable line per event."""
    if kind == "button":
        held = f" after {event['held_ms']:.0f} ms" if event["edge"] != "press" else ""
        return f"button   {event['name']} (pin {event['pin']}) {event['edge']}{held}"
    if kind in ("intent", "no_match"):
        stages = ", ".join(f"{k} {v:.0f}" for k, v in event.get("latency_ms", {}).items())
        what = (f"{event['intent']} ({event['confidence']:.2f})" if kind == "intent"
                else f"no match ({event.get('reason')})")
        return f"{kind:<8} {what}  heard {event.get('transcript')!r}  ms: {stages}"
    if kind == "action":
        status = "ok" if event.get("ok") else f"FAILED: {event.get('error')}"
        detail = {k: v for k, v in event.items() if k in ("pin", "set", "on", "name", "argv", "label")}
        return f"action   {event['type']} {detail} {status}"
    if kind == "error":
        return f"error    [{event.get('source')}] {event.get('code')}: {event.get('message')}"
    rest = {k: v for k, v in event.items() if k not in ("id", "kind", "time")}
    return f"{kind:<8} {rest}"


def kinds_arg(text: str) -> str:
    """--kinds, checked here: the daemon would refuse an unknown kind too, but only after connecting."""
    try:
        return ",".join(parse_kinds(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """--count: a whole number of at least 1 (leave the flag out to follow the events without end)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of at least 1; leave --count out to never stop")
    return count


def cmd_listen(args: argparse.Namespace) -> int:
    query = []
    if args.kinds:
        query.append(f"kinds={args.kinds}")
    if args.since is not None:
        query.append(f"since={args.since}")
    path = "/v1/events" + ("?" + "&".join(query) if query else "")
    seen = 0
    for kind, data in _client(args).events(path):
        event = json.loads(data)
        print(data if args.json else describe(kind, event), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return 0


def cmd_voice(args: argparse.Namespace) -> int:
    try:
        audio = sys.stdin.buffer.read() if str(args.wav) == "-" else Path(args.wav).read_bytes()
    except OSError as exc:
        print(f"edgeslm voice: cannot read {args.wav}: {exc.strerror}; give the path of a 16 kHz mono WAV "
              "('-' reads stdin)", file=sys.stderr)
        return EX_NOINPUT
    path = "/v1/audio/intent" + ("?act=false" if args.no_action else "")
    answer = _client(args).request("POST", path, content=audio, headers={"Content-Type": "audio/wav"})
    print(json.dumps(answer, indent=2) if args.json else describe(answer["status"], answer))
    return 0 if answer["status"] == "intent" else 2


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    gpio = sub.add_parser("gpio", help="GPIO of a running daemon: pin states, simulated presses",
                          formatter_class=FORMATTER,
                          description="Show the daemon's pins, or press a trigger pin of its mock backend.")
    gpio_sub = gpio.add_subparsers(dest="gpio_command", metavar="ACTION", required=True)
    press = gpio_sub.add_parser(
        "press", help="press a trigger pin (mock backend)", formatter_class=FORMATTER,
        description="Drive a configured trigger pin to its pressed level, then release it: what a finger on\n"
                    "the button would do. Only the mock backend can (gpio.backend = \"mock\").",
        epilog="examples:\n  edgeslm gpio press 17\n  edgeslm gpio press 17 --hold-ms 2500   # hold (push-to-talk)")
    press.add_argument("pin", type=int, help="BCM number of a configured trigger")
    press.add_argument("--hold-ms", type=float, default=100.0, help="how long to hold it down (default 100)")
    _socket_arg(press)
    press.set_defaults(func=cmd_gpio_press)
    status = gpio_sub.add_parser("status", help="backend, triggers and outputs with their levels",
                                 formatter_class=FORMATTER, epilog="example:\n  edgeslm gpio status")
    _socket_arg(status)
    status.set_defaults(func=cmd_gpio_status)

    listen = sub.add_parser(
        "listen", help="print the daemon's events as they happen", formatter_class=FORMATTER,
        description="Follow GET /v1/events: button presses, voice results (transcript, intent, confidence,\n"
                    "latency per stage), actions, errors and model state. Ctrl-C stops.",
        epilog="examples:\n  edgeslm listen\n  edgeslm listen --kinds intent,no_match --json\n"
               "  edgeslm listen --since 0      # the recent events the daemon kept, then new ones")
    listen.add_argument("--kinds", type=kinds_arg, help=f"comma-separated kinds to show ({', '.join(KINDS)})")
    listen.add_argument("--since", type=int, metavar="ID", help="first replay kept events after this id")
    listen.add_argument("--count", type=count_arg, metavar="N", help="stop after N events, N >= 1 (default: never)")
    _socket_arg(listen)
    listen.set_defaults(func=cmd_listen)

    voice = sub.add_parser(
        "voice", help="run a WAV through the voice pipeline (VAD, speech, intent, action)", formatter_class=FORMATTER,
        description="POST a 16 kHz mono 16-bit WAV to /v1/audio/intent and print what was heard and done.\n"
                    "Exit status 2 when nothing matched, 66 when the WAV cannot be read.",
        epilog="examples:\n  espeak-ng -w cmd.wav \"turn on the light\" && sox cmd.wav -r 16000 -c 1 -b 16 c16.wav\n"
               "  edgeslm voice c16.wav\n  edgeslm voice c16.wav --no-action --json")
    voice.add_argument("wav", help="the WAV file ('-' reads stdin)")
    voice.add_argument("--no-action", action="store_true", help="recognise only; run no action")
    _socket_arg(voice)
    voice.set_defaults(func=cmd_voice)
