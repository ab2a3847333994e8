"""Client commands that talk to a running daemon over its socket: models, classify, embed."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from edgeslm.errors import BadInputError, EdgeslmError


def _socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, metavar="PATH",
                        help="daemon socket (default: $EDGESLM_SOCKET, the config's server.socket_path, "
                             "./run/edgeslm.sock, then /run/edgeslm/edgeslm.sock)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="config file to read the socket path from")
    parser.add_argument("--json", action="store_true", help="print the daemon's raw JSON answer")


def _client(args: argparse.Namespace):
    from edgeslm.client import Client, find_socket

    return Client(find_socket(args.socket, args.config))


def cmd_models(args: argparse.Namespace) -> int:
    if args.available:
        from edgeslm.cli.store import cmd_available

        return cmd_available(args)
    answer = _client(args).get("/v1/models")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = [("NAME", "STATE", "RUNTIME", "SIZE", "TASKS", "DETAIL")]
    for m in answer["data"]:
        size = f"{m['file_size_bytes'] / 1e6:.1f} MB" if m.get("file_size_bytes") else "-"
        detail = m.get("error") or m.get("quantization") or ""
        rows.append((m["id"], m["state"], m.get("runtime") or "-", size, ",".join(m.get("tasks", [])), detail))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:5], widths)) + "  " + str(row[5]))
    return 0


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    if not texts or texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise BadInputError("give at least one text as an argument, or lines on stdin with '-'")
    return texts


def cmd_classify(args: argparse.Namespace) -> int:
    texts = _texts(args)
    body = {"input": texts, "top_k": args.top_k, "truncate": not args.no_truncate}
    if args.model:
        body["model"] = args.model
    try:
        answer = _client(args).post("/v1/classify", body)
    except EdgeslmError as exc:
        if not args.no_truncate:
            raise
        raise _for_command_line(exc) from None
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for text, item in zip(texts, answer["data"]):
        others = ", ".join(f"{t['label']} {t['score']:.2f}" for t in item["top"][1:])
        flag = "  (truncated)" if item["truncated"] else ""
        print(f"{item['label']:<16} {item['score']:.3f}  {text}{flag}" + (f"   [{others}]" if others else ""))
    return 0


def _for_command_line(exc: EdgeslmError) -> EdgeslmError:
    """A too-long-text error with the command line's fix (drop --no-truncate) instead of the HTTP API's."""
    from edgeslm.tasks.text import TRUNCATE_FIX  # only on this error: the CLI otherwise needs no tokenizer import

    if TRUNCATE_FIX not in exc.message:
        return exc
    message = exc.message.replace(TRUNCATE_FIX, "drop --no-truncate (the text is then cut, and flagged)")
    index = re.fullmatch(r"input\[(\d+)\]", exc.param or "")
    if index:  # the CLI's user gave texts, not an "input" list
        message = message.replace(index.group(0), f"text {int(index.group(1)) + 1}", 1)
    return BadInputError(message, param=exc.param, code=exc.code)


def cmd_embed(args: argparse.Namespace) -> int:
    texts = _texts(args)
    answer = _client(args).post("/v1/embeddings", {"model": args.model, "input": texts})
    if args.json:
        print(json.dumps(answer))
        return 0
    for text, item in zip(texts, answer["data"]):
        vector = item["embedding"]
        head = " ".join(f"{x:+.3f}" for x in vector[:6])
        print(f"{len(vector)} dims  [{head} ...]  {text}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    models = sub.add_parser("models", help="list the daemon's models and their state", formatter_class=FORMATTER,
                            description="Ask the running daemon which models it serves, failed ones included.\n"
                                        "With --available, list the models `edgeslm pull` can build instead.",
                            epilog="examples:\n  edgeslm models\n  edgeslm models --available")
    _socket_arg(models)
    from edgeslm.cli.store import add_available_flag

    add_available_flag(models)
    models.set_defaults(func=cmd_models)

    classify = sub.add_parser(
        "classify", help="label texts with a classifier", formatter_class=FORMATTER,
        description="Send texts to POST /v1/classify and print the best label, its score and the runners-up.",
        epilog="examples:\n  edgeslm classify \"turn on the kitchen light\" \"what time is it\"\n"
               "  echo \"volume up please\" | edgeslm classify -",
    )
    classify.add_argument("text", nargs="*", help="texts to label ('-' or none: read lines from stdin)")
    classify.add_argument("--model", help="model name (default: the first model that classifies)")
    classify.add_argument("--top-k", type=int, default=3, help="labels to show per text (default 3)")
    classify.add_argument("--no-truncate", action="store_true", help="fail on texts longer than the model takes")
    _socket_arg(classify)
    classify.set_defaults(func=cmd_classify)

    embed = sub.add_parser(
        "embed", help="embed texts as vectors", formatter_class=FORMATTER,
        description="Send texts to POST /v1/embeddings and print each vector's size and first values.",
        epilog="example:\n  edgeslm embed --model intents \"dim the lights\" --json",
    )
    embed.add_argument("text", nargs="*", help="texts to embed ('-' or none: read lines from stdin)")
    embed.add_argument("--model", default="intents", help="model name (default: intents)")
    _socket_arg(embed)
    embed.set_defaults(func=cmd_embed)
