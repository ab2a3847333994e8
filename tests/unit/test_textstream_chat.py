"""Streamed detokenisation, stop strings across tokens, and chat templates in the Jinja2 sandbox."""

from __future__ import annotations

import pytest

from edgeslm.errors import BadInputError, ModelLoadError
from edgeslm.tasks.chat import ChatTemplate
from edgeslm.tasks.textstream import StopMatcher, TextStream
from tests.tinyllama import CHATML
from tests.unit.test_generator import byte_id, tokenizer  # noqa: F401 - fixture


def test_stop_matcher_holds_back_a_possible_stop_until_it_is_decided():
    m = StopMatcher(["STOP"])
    assert m.feed("hello S") == ("hello ", False)
    assert m.feed("T") == ("", False)
    assert m.feed("ay") == ("STay", False)  # not a stop after all: released
    assert m.feed(" and STO") == (" and ", False)
    assert m.feed("P now") == ("", True)


def test_stop_matcher_without_stops_passes_everything_and_flush_releases_held_text():
    assert StopMatcher([]).feed("abc") == ("abc", False)
    m = StopMatcher(["xyz"])
    assert m.feed("abcx") == ("abc", False)
    assert m.flush() == "x"


def test_text_stream_waits_for_whole_utf8_characters(tokenizer):  # noqa: F811
    stream = TextStream(tokenizer)
    pieces = [stream.push(byte_id(chr(b)))[0] for b in "é!".encode()]
    assert pieces == ["", "é", "!"]  # the first byte of é alone is no character yet
    assert stream.text == "é!"


def test_chatml_template_renders_turns_and_the_generation_prompt():
    template = ChatTemplate(CHATML, bos_token="", eos_token="")
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_templates_run_sandboxed_and_errors_are_client_errors():
    nosy = ChatTemplate("{{ messages.__class__.__mro__ }}", bos_token="", eos_token="")
    with pytest.raises(BadInputError):
        nosy.render([{"role": "user", "content": "x"}])
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
                          bos_token="", eos_token="")
    with pytest.raises(BadInputError, match="user first"):
        strict.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for %}", bos_token="", eos_token="")


def test_no_template_falls_back_to_role_lines():
    assert ChatTemplate("", bos_token="", eos_token="").render([{"role": "user", "content": "hi"}]) == \
        "user: hi\nassistant: "
