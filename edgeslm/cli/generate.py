"""`edgeslm generate` and `edgeslm chat`: text generation from a running daemon, streamed as it arrives."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgeslm.errors import BadInputError

EXIT_WORDS = {"/exit", "/quit", "/bye"}


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: the first model that generates)")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: 0.7)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default 1)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k best tokens (default: all)")
    parser.add_argument("--repetition-penalty", type=float, default=None, help="above 1 discourages repeats")
    parser.add_argument("--seed", type=int, help="make sampling reproducible")
    parser.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    parser.add_argument("--socket", type=Path, metavar="PATH",
                        help="daemon socket (default: $EDGESLM_SOCKET, the config's, ./run/edgeslm.sock, then "
                             "/run/edgeslm/edgeslm.sock)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="config file to read the socket path from")


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"temperature": 0.7 if args.temperature is None else args.temperature}
    for key in ("model", "max_tokens", "top_p", "top_k", "repetition_penalty", "seed", "stop"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    return body


def _client(args: argparse.Namespace):
    from edgeslm.client import Client, find_socket

    return Client(find_socket(args.socket, args.config), timeout_s=600)


def _stream_text(client: Any, path: str, body: dict[str, Any], chat: bool, prefix: str = ""
                 ) -> tuple[str, str | None, dict | None]:
    """Print the reply as it streams: `prefix` first, once the reply starts (an error before then prints none),
    and a newline after it, even when the stream breaks off with an error."""
    parts, reason, usage = [], None, None
    started = False
    try:
        for event in client.stream(path, {**body, "stream_options": {"include_usage": True}}):
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                reason = choice.get("finish_reason") or reason
                if not started and (text or reason):
                    print(prefix, end="", flush=True)
                    started = True
                if text:
                    parts.append(text)
                    print(text, end="", flush=True)
    finally:
        if started:
            print(flush=True)
    return "".join(parts), reason, usage


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = " ".join(args.prompt)
    if not prompt or prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise BadInputError("give a prompt as arguments, or on stdin with '-'")
    body = {**_body(args), "prompt": prompt}
    client = _client(args)
    if args.no_stream:
        answer = client.post("/v1/completions", body)
        print(answer["choices"][0]["text"])
        reason, usage = answer["choices"][0]["finish_reason"], answer["usage"]
    else:
        _, reason, usage = _stream_text(client, "/v1/completions", body, chat=False)
    if args.verbose and usage:
        print(f"[{reason}; {usage['prompt_tokens']} prompt + {usage['completion_tokens']} generated tokens]",
              file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client(args)
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chatting with the daemon's model; /exit or Ctrl-D ends.", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("you> ")  # line editing and history when readline is available
            except EOFError:
                print(file=sys.stderr)
                return 0
        else:
            line = sys.stdin.readline()
            if not line:
                return 0
        if line.strip() in EXIT_WORDS:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        reply, _, _ = _stream_text(client, "/v1/chat/completions", {**_body(args), "messages": messages}, chat=True,
                                   prefix="assistant> ")
        messages.append({"role": "assistant", "content": reply})


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    generate = sub.add_parser(
        "generate", help="continue a text with a language model", formatter_class=FORMATTER,
        description="Send a prompt to POST /v1/completions and print the continuation as it is generated.",
        epilog="examples:\n  edgeslm generate \"The Raspberry Pi is\"\n"
               "  edgeslm generate --max-tokens 64 --temperature 0 \"def fibonacci(n):\"\n"
               "  echo \"Once upon a time\" | edgeslm generate --seed 1 -",
    )
    generate.add_argument("prompt", nargs="*", help="the text to continue ('-' or none: read stdin)")
    generate.add_argument("--no-stream", action="store_true", help="wait for the whole answer, then print it")
    generate.add_argument("-v", "--verbose", action="store_true", help="print the finish reason and token counts")
    _sampling_args(generate)
    generate.set_defaults(func=cmd_generate)

    chat = sub.add_parser(
        "chat", help="talk to a chat model, streaming its replies", formatter_class=FORMATTER,
        description="An interactive conversation over POST /v1/chat/completions: each line you type is a user\n"
                    "turn; the reply streams back and the whole conversation is sent with the next turn.\n"
                    "/exit or Ctrl-D ends. Lines piped on stdin are sent one turn each.",
        epilog="examples:\n  edgeslm chat\n  edgeslm chat --system \"Answer in one sentence.\" --temperature 0.3\n"
               "  printf 'hi\\nwhat can you do?\\n' | edgeslm chat --max-tokens 40",
    )
    chat.add_argument("--system", metavar="TEXT", help="a system message to start the conversation with")
    _sampling_args(chat)
    chat.set_defaults(func=cmd_chat)
