"""The card's [generate] section and its chat template, rendered in a sandboxed Jinja2 environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeslm.errors import BadInputError, ModelLoadError


class CardSelfCheckGenerate(BaseModel):
    """A prompt with the fp32 reference's top next tokens and their log-probabilities at every position."""

    model_config = ConfigDict(extra="allow", frozen=True)

    prompt_ids: tuple[int, ...] = Field(min_length=2)
    top_ids: tuple[tuple[int, ...], ...]
    top_logprobs: tuple[tuple[float, ...], ...]
    min_top1: float = Field(0.8, ge=0, le=1)
    max_logprob_error: float = Field(0.5, gt=0)


class CardGenerate(BaseModel):
    """What generation needs from model.toml beyond the graph itself."""

    model_config = ConfigDict(extra="allow", frozen=True)

    context_length: int = Field(2048, ge=8)
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    chat_template: str = ""
    selfcheck: CardSelfCheckGenerate | None = None

    @classmethod
    def from_card(cls, card: Any) -> CardGenerate:
        data = (card.model_extra or {}).get("generate") or {}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            where = "; ".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors())
            raise ModelLoadError(f"model card's [generate] section is invalid: {where}") from None


def _raise(message: str) -> None:
    raise BadInputError(f"the chat template refused the messages: {message}", param="messages")


class ChatTemplate:
    """A Hugging Face style chat template (Jinja2), compiled once, run in an immutable sandbox."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self._error = TemplateError
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source) if source else None
        except TemplateError as exc:
            raise ModelLoadError(f"the card's chat template does not compile: {exc}") from None
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ({"role", "content"} dicts), ending with the assistant's turn."""
        if self._template is None:
            # No template: plain "role: content" lines, which any model at least reads.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **self._specials)
        except BadInputError:
            raise
        except (self._error, TypeError, ValueError, KeyError) as exc:
            raise BadInputError(f"the chat template cannot render these messages: {exc}", param="messages") from None
