"""A served text-generation model: engine, KV cache, generator thread, tokenizer and chat template, checked at load."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from edgeslm.config import ModelConfig
from edgeslm.core.scores import log_softmax
from edgeslm.errors import BadInputError, ModelLoadError, SelfCheckError
from edgeslm.runtime import Engine, EngineOptions, open_engine
from edgeslm.tasks.card import ModelCard, locate_model, sha256_of
from edgeslm.tasks.chat import CardGenerate, ChatTemplate
from edgeslm.tasks.decoder import Decoder
from edgeslm.tasks.generate import Generator
from edgeslm.tasks.text import token_ids


class GenerativeModel:
    """Serves the `generate` task. Duck-types ServedModel where the registry and the API need it."""

    tasks = ["generate"]

    def __init__(self, config: ModelConfig, path: Path, card: ModelCard, engine: Engine, tokenizer: Tokenizer):
        self.name, self.path, self.card, self.engine = config.name, path, card, engine
        self.config = config
        self.tokenizer = tokenizer
        self.spec = CardGenerate.from_card(card)
        context = min(config.generation.context_tokens, self.spec.context_length)
        self.decoder = Decoder(engine, slots=config.generation.max_sequences, context=context)
        self.template = ChatTemplate(self.spec.chat_template, bos_token=self.spec.bos_token,
                                     eos_token=self.spec.eos_token)
        self.generator = Generator(self.decoder, tokenizer, stop_token_ids=self.spec.stop_token_ids,
                                   max_queue=config.batching.max_queue,
                                   prefill_chunk=config.generation.prefill_chunk_tokens, name=config.name)
        self.selfcheck: dict[str, Any] | None = None
        self.loaded_at = time.time()

    @classmethod
    def load(cls, config: ModelConfig, path: Path | None = None, card: ModelCard | None = None) -> GenerativeModel:
        if path is None or card is None:
            path, card = locate_model(config.path)
        entry = card.file(path)
        extra = entry.model_extra or {}
        checks = [(path, entry.sha256)]
        if extra.get("data_file"):
            checks.append((path.parent / str(extra["data_file"]), extra.get("data_sha256")))
        for file, expected in checks:
            if not file.is_file():
                raise ModelLoadError(f"{file} is missing; pull the model again")
            if config.verify_sha256 and expected and sha256_of(file) != expected:
                raise ModelLoadError(f"{file.name} does not match its card's sha256: the file is corrupt or was "
                                     "replaced; pull the model again")
        tokenizer_path = card.resolve(card.model.tokenizer or "tokenizer.json")
        assert tokenizer_path is not None
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"cannot read tokenizer {tokenizer_path}: {exc}") from None
        options = EngineOptions(config.threads, config.graph_optimization, config.providers, config.spin)
        engine = open_engine(path, config.runtime, options)
        try:
            model = cls(config, path, card, engine, tokenizer)
            if config.selfcheck and model.spec.selfcheck is not None:
                model.run_selfcheck()
        except BaseException:
            engine.close()
            raise
        model.generator.start()
        return model

    def run_selfcheck(self) -> None:
        """Teacher-force the card's prompt and compare with the fp32 reference's top tokens and log-probs."""
        check = self.spec.selfcheck
        assert check is not None
        ids = np.array(check.prompt_ids[: self.decoder.context], dtype=np.int64)
        try:
            logits = self.decoder.prefill(0, ids, 0, all_logits=True)
        except Exception as exc:
            raise SelfCheckError(f"selfcheck could not run on {self.engine.runtime}: {exc}") from exc
        top_ids = np.array(check.top_ids[: len(ids)], dtype=np.int64)
        expected = np.array(check.top_logprobs[: len(ids)], dtype=np.float64)
        top1 = float(np.mean(logits.argmax(-1) == top_ids[:, 0]))
        # A row at a time: float64 copies of the whole [n, 49k] array would add tens of MB to the peak at load.
        picked = np.stack([log_softmax(row)[ids] for row, ids in zip(logits, top_ids)])
        error = np.abs(picked - expected)
        passed = top1 >= check.min_top1 and float(error.mean()) <= check.max_logprob_error
        self.selfcheck = {"top1_agreement": round(top1, 4), "mean_logprob_error": round(float(error.mean()), 5),
                          "max_logprob_error": round(float(error.max()), 5), "passed": passed}
        if not passed:
            raise SelfCheckError(
                f"selfcheck failed on {self.engine.runtime}: top-1 agreement {top1:.2f} (needs {check.min_top1}), "
                f"mean log-prob error {error.mean():.3f} (allowed {check.max_logprob_error}); this runtime "
                "computes the model wrongly, try another onnxruntime version")

    # Prompts ----------------------------------------------------------------------------------------------

    def encode(self, text: str) -> np.ndarray:
        return np.array(token_ids(self.tokenizer, text), dtype=np.int64)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not messages:
            raise BadInputError("messages is empty; send at least one message", param="messages")
        text = self.template.render(messages, add_generation_prompt=True)
        # The template writes the special tokens itself: no extra BOS.
        return np.array(token_ids(self.tokenizer, text, add_special_tokens=False), dtype=np.int64)

    def max_tokens_for(self, prompt_tokens: int, requested: int | None, default: int, param: str = "messages") -> int:
        """How many tokens to generate; a prompt that fills the context is a 400 naming `param` (the request's
        prompt or messages)."""
        context = self.decoder.context
        if prompt_tokens >= context:
            counted = (f"prompt is {prompt_tokens} tokens" if param == "prompt"
                       else f"messages are {prompt_tokens} tokens with the chat template")
            raise BadInputError(f"{counted}; model {self.name!r} holds {context} (its context, the answer included): "
                                f"shorten the {param}", param=param)
        return min(default, context - prompt_tokens) if requested is None else requested

    # Registry hooks ---------------------------------------------------------------------------------------

    @property
    def tensors(self) -> Any:
        # The engine's KV cache belongs to the generation worker: raw tensor calls would corrupt it.
        raise BadInputError(f"model {self.name!r} serves generate; raw tensor inference is not available for it, "
                            "use /v1/completions or /v1/chat/completions", param="model", code="wrong_task")

    def info(self) -> dict[str, Any]:
        file = self.card.file(self.path)
        info = {
            "id": self.name, "object": "model", "created": int(self.loaded_at), "owned_by": "edgeslm",
            "state": "ready", "tasks": self.tasks, "path": str(self.path), "quantization": file.quantization,
            "file_size_bytes": self._size_bytes(), "max_seq_len": self.decoder.context,
            "context_length": self.decoder.context, "max_sequences": self.decoder.slots,
            "kv_cache_bytes": self.decoder.cache_bytes, "selfcheck": self.selfcheck,
            "waiting": self.generator.scheduler.waiting, "running": len(self.generator.scheduler.running),
            "steps": self.generator.steps, "peak_batch": self.generator.peak_batch,
            "finished": dict(self.generator.finished),
        }
        info.update(self.engine.describe())
        return info

    def _size_bytes(self) -> int:
        data = (self.card.file(self.path).model_extra or {}).get("data_file")
        extra = self.path.parent / str(data) if data else None
        return self.path.stat().st_size + (extra.stat().st_size if extra and extra.is_file() else 0)

    def close(self, timeout_s: float | None = None) -> None:
        self.generator.stop(timeout_s=timeout_s)
        self.engine.close()
