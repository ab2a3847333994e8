"""The README's snippets as a reader pastes them: config blocks load, commands parse, request bodies validate."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from edgeslm.cli import build_parser
from edgeslm.config import load_config
from edgeslm.server import schemas
from edgeslm.server.completion_schemas import ChatRequest, CompletionRequest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(lang, textwrap.dedent(body)) for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S)]
BODY_SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/classify": schemas.ClassifyRequest,
    "/v1/embeddings": schemas.EmbeddingsRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatRequest,
}


def shell_commands() -> list[list[str]]:
    """The commands of every sh/bash block, as the shell splits them (continuations joined, comments dropped)."""
    found = []
    for lang, body in BLOCKS:
        if lang not in ("sh", "bash"):
            continue
        pending = ""
        for line in body.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted argument goes on over the next line
                continue
            pending = ""
            if words:
                found.append(words[1:] if words[0] == "sudo" else words)
    return found


COMMANDS = shell_commands()
MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_has_the_snippets_these_tests_read():
    assert sum(lang == "toml" for lang, _ in BLOCKS) >= 5
    assert sum(words[0] == "edgeslm" for words in COMMANDS) >= 15
    assert sum(words[0] == "curl" for words in COMMANDS) >= 5


@pytest.mark.parametrize("block", [body for lang, body in BLOCKS if lang == "toml"],
                         ids=lambda body: body.split("\n", 1)[0])
def test_every_config_block_loads(block, tmp_path):
    if block.lstrip().startswith("[models."):  # a model's sub-table, shown without its model
        block = '[[models]]\nname = "m"\npath = "m"\n' + block
    path = tmp_path / "edgeslm.toml"
    path.write_text(block, encoding="utf-8")
    load_config(path, env={})  # raises ConfigError naming the bad key


@pytest.mark.parametrize("words", [w for w in COMMANDS if w[0] == "edgeslm"], ids=" ".join)
def test_every_edgeslm_command_parses(words, capsys):
    try:
        build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"README command does not parse: {' '.join(words)}\n{capsys.readouterr().err}")


@pytest.mark.parametrize("words", [w for w in COMMANDS if w[0] == "make"], ids=" ".join)
def test_every_make_target_exists(words):
    assert [w for w in words[1:] if "=" not in w][0] in MAKE_TARGETS


def _url(words: list[str]) -> str:
    return next(w for w in words if w.startswith("http://localhost"))


@pytest.mark.parametrize("words", [w for w in COMMANDS if w[0] == "curl" and "-d" in w], ids=_url)
def test_every_request_body_is_valid_json_for_its_endpoint(words):
    path = _url(words).removeprefix("http://localhost")
    body = json.loads(words[words.index("-d") + 1])
    if path.startswith("/v2/models/"):
        schemas.InferRequest.model_validate(body)
    else:
        BODY_SCHEMAS[path].model_validate(body)


def test_commands_named_in_the_text_exist():
    """`make X` and `edgeslm X ...` in the prose name real targets and subcommands."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    spans = [shlex.split(span) for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(("make ", "edgeslm "))]
    subcommands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)  # type: ignore[arg-type]
    assert len(spans) >= 20
    for words in spans:
        assert words[1] in (MAKE_TARGETS if words[0] == "make" else subcommands), " ".join(words)
