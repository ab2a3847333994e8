"""A served model (engine + batcher + tasks, checked at load) and the registry of all of them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm.config import ModelConfig
from edgeslm.core.batcher import Completion, DynamicBatcher, Ticket
from edgeslm.core.scores import row_cosine
from edgeslm.core.tensors import length_groups, merge_groups
from edgeslm.errors import (
    BadInputError,
    DeadlineError,
    EdgeslmError,
    ModelLoadError,
    ModelNotReadyError,
    SelfCheckError,
    UnknownModelError,
)
from edgeslm.runtime import Engine, EngineOptions, open_engine
from edgeslm.tasks.card import ModelCard, load_card, locate_model, sha256_of
from edgeslm.tasks.classify import ClassifyTask, read_labels
from edgeslm.tasks.cost import measure_call_tokens
from edgeslm.tasks.embed import EmbedTask
from edgeslm.tasks.tensors import TensorTask
from edgeslm.tasks.text import TextEncoder

log = logging.getLogger(__name__)


class ServedModel:
    """One model ready to serve: its engine, batch worker and the tasks its card enables."""

    def __init__(self, name: str, path: Path, card: ModelCard, engine: Engine, batcher: DynamicBatcher):
        self.name, self.path, self.card, self.engine, self.batcher = name, path, card, engine, batcher
        self.encoder: TextEncoder | None = None
        self.classify: ClassifyTask | None = None
        self.embed: EmbedTask | None = None
        self.tensors = TensorTask(engine)
        self.selfcheck: dict[str, Any] | None = None
        self.loaded_at = time.time()

    @classmethod
    def load(cls, config: ModelConfig, *, engine: Engine | None = None,
             clock: Callable[[], float] = time.monotonic) -> ServedModel:
        """Open, check and start a model; ModelLoadError says why it cannot be served."""
        if config.path is None or (config.store and engine is None and not config.path.is_dir()):
            where = f"into {config.path.parent}" if config.path is not None else "into the model store"
            raise ModelLoadError(f"model {config.store!r} is not pulled {where}: run `edgeslm pull {config.store}`")
        path, card = (locate_model(config.path, config.runtime) if engine is None
                      else (config.path, _card_for(config.path)))
        expected = card.file(path).sha256
        if engine is None and config.verify_sha256 and expected:
            actual = sha256_of(path)
            if actual != expected:
                raise ModelLoadError(
                    f"{path.name} does not match its card's sha256 ({actual[:12]}… vs {expected[:12]}…): "
                    "the file is corrupt or was replaced; pull or copy it again"
                )
        options = EngineOptions(config.threads, config.graph_optimization, config.providers, config.spin)
        engine = engine or open_engine(path, config.runtime, options)
        try:
            max_batch = min(config.batching.max_batch, engine.max_batch or config.batching.max_batch)
            pad = {card.inputs.input_ids: card.model.pad_id}
            for extra in (card.inputs.attention_mask, card.inputs.token_type_ids):
                if extra:
                    pad[extra] = 0
            batcher = DynamicBatcher(
                engine.run, clock=clock, pad_values=pad, max_batch=max_batch,
                max_delay_s=config.batching.max_delay_ms / 1000, max_queue=config.batching.max_queue,
                inline_max_s=config.batching.inline_max_ms / 1000,
                name=config.name,
            )
            model = cls(config.name, path, card, engine, batcher)
            model._build_tasks()
            if config.selfcheck and card.selfcheck is not None:
                model._run_selfcheck()
            model._weigh_padding(config.batching.call_cost_tokens)
        except BaseException:
            engine.close()
            raise
        batcher.start()
        return model

    def _build_tasks(self) -> None:
        card, engine = self.card, self.engine
        wanted = set(card.model.tasks)
        if wanted & {"classify", "embed"} or card.model.tokenizer:
            tokenizer = card.resolve(card.model.tokenizer or "tokenizer.json")
            assert tokenizer is not None
            if not tokenizer.is_file():
                raise ModelLoadError(f"tokenizer {tokenizer} is missing; the card's tasks need it")
            max_len = min(card.model.max_seq_len, engine.max_seq or card.model.max_seq_len)
            self.encoder = TextEncoder(
                tokenizer, max_len=max_len, pad_id=card.model.pad_id, model_name=self.name,
                ids_name=card.inputs.input_ids, mask_name=card.inputs.attention_mask,
                type_ids_name=card.inputs.token_type_ids,
                dtypes={spec.name: spec.dtype for spec in engine.inputs},
            )
            self.tensors.token_inputs = self.encoder.token_inputs()
        outputs = {spec.name: spec for spec in engine.outputs}
        for task, output in (("classify", card.classify.output), ("embed", card.embed.output)):
            if task in wanted and output not in outputs:
                raise ModelLoadError(f"card's {task} output {output!r} is not an output of {self.path.name} "
                                     f"(it has {', '.join(outputs)})")
        if "classify" in wanted:
            labels_path = card.resolve(card.classify.labels)
            assert labels_path is not None and self.encoder is not None
            self.classify = ClassifyTask(self.encoder, outputs[card.classify.output], read_labels(labels_path))
        if "embed" in wanted:
            assert self.encoder is not None
            self.embed = EmbedTask(self.encoder, outputs[card.embed.output],
                                   pooling=card.embed.pooling, normalize=card.embed.normalize)

    def _run_selfcheck(self) -> None:
        check = self.card.selfcheck
        assert check is not None
        if self.encoder is None:
            raise ModelLoadError("the card has a selfcheck but no tokenizer to encode its input")
        encoded = self.encoder.encode(check.input)
        try:
            actual = self.engine.run(encoded.feeds)[check.output]
        except KeyError:
            raise ModelLoadError(f"selfcheck output {check.output!r} is not an output of {self.path.name}") from None
        except Exception as exc:
            raise SelfCheckError(f"selfcheck could not run on {self.engine.runtime}: {exc}") from exc
        expected = np.asarray(check.expected, dtype=np.float64)
        if actual.reshape(actual.shape[0], -1).shape != expected.reshape(expected.shape[0], -1).shape:
            raise SelfCheckError(f"selfcheck output has shape {list(actual.shape)}; the card expects "
                                 f"{list(expected.shape)}")
        cosines = row_cosine(actual, expected)
        worst = int(np.argmin(cosines))
        top1_ok = True
        if check.top1:
            flat_actual, flat_expected = actual.reshape(len(actual), -1), expected.reshape(len(expected), -1)
            top1_ok = bool(np.all(flat_actual.argmax(1) == flat_expected.argmax(1)))
        self.selfcheck = {"min_cosine": round(float(cosines.min()), 6), "top1_agrees": top1_ok,
                          "threshold": check.min_cosine, "passed": bool(cosines.min() >= check.min_cosine and top1_ok)}
        if not self.selfcheck["passed"]:
            reason = (f"min cosine {cosines.min():.4f} < {check.min_cosine} (on {check.input[worst]!r})"
                      if cosines.min() < check.min_cosine else "top label differs from the reference")
            raise SelfCheckError(
                f"selfcheck failed on {self.engine.describe().get('runtime_version', self.engine.runtime)}: "
                f"{reason}; this runtime gives wrong answers for this file, try another runtime or file"
            )

    def _weigh_padding(self, call_tokens: float | None) -> None:
        """Tell the batcher what a call costs in token slots (configured, else measured now), so that it pads
        a text into a batch only when that is cheaper than a call of its own. Without text inputs, or when the
        measurement cannot tell, batches pad to their longest row, whatever the lengths."""
        if call_tokens is None and self.encoder is not None:
            call_tokens = measure_call_tokens(self.engine, self.encoder)
        if call_tokens is None:
            return
        self.engine.set_call_tokens(call_tokens)
        self.batcher.cost = self.engine.batch_cost

    @property
    def tasks(self) -> list[str]:
        return [t for t, obj in (("classify", self.classify), ("embed", self.embed)) if obj] + ["tensors"]

    def chunks(self, feeds: Mapping[str, np.ndarray], lengths: np.ndarray | None = None,
               ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
        """Split a request's rows into pieces the batcher can take (at most max_batch rows each), and the
        original index of each piece's rows in order (None when the pieces keep the request's order).

        Given the texts' token `lengths`, and once the batcher weighs padding, texts of unlike lengths go in
        pieces of their own (shortest first, each cut to its longest text), as the batcher would batch them."""
        rows = next(iter(feeds.values())).shape[0]
        step = self.batcher.max_batch
        cost = self.batcher.cost
        if lengths is not None and cost is not None and rows > 1 and int(lengths.min()) != int(lengths.max()):
            # A piece costs an engine call and a trip of its own through the batcher and the event loop (a
            # future, a completion, a wake-up), about as much again for a small model: charged twice.
            extra = self.engine.call_tokens or 0.0
            groups = length_groups(lengths, lambda r, n: cost(r, n) + extra, step)
            if len(groups) > 1:
                padded = self.batcher.padded_inputs
                pieces = [{name: (value[group, : int(lengths[group].max())] if name in padded else value[group])
                           for name, value in feeds.items()} for group in groups]
                return pieces, np.concatenate(groups)
        if rows <= step:
            return [dict(feeds)], None
        return [{k: v[i : i + step] for k, v in feeds.items()} for i in range(0, rows, step)], None

    def infer(self, feeds: Mapping[str, np.ndarray], *, timeout_s: float = 30.0, pad: bool = True,
              lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Blocking helper for threads that are not the event loop (CLI tools, voice pipeline)."""
        pieces = []
        chunks, order = self.chunks(feeds, lengths if pad else None)
        for chunk in chunks:
            waiter = _Waiter()
            ticket: Ticket = self.batcher.submit(chunk, waiter.done, pad=pad)
            completion = waiter.wait(timeout_s)
            if completion is None:
                ticket.cancel()
                raise DeadlineError(f"model {self.name!r} did not answer within {timeout_s:g} s")
            if completion.error is not None:
                raise completion.error
            assert completion.outputs is not None
            pieces.append(completion.outputs)
        return merge_groups(pieces, order)

    def info(self) -> dict[str, Any]:
        file = self.card.file(self.path)
        info = {
            "id": self.name, "object": "model", "created": int(self.loaded_at), "owned_by": "edgeslm",
            "state": "ready", "tasks": self.tasks, "path": str(self.path),
            "quantization": file.quantization, "file_size_bytes": self.path.stat().st_size,
            "max_seq_len": self.encoder.max_len if self.encoder else None,
            "max_batch": self.batcher.max_batch, "selfcheck": self.selfcheck,
            "call_cost_tokens": None if self.engine.call_tokens is None else round(self.engine.call_tokens, 1),
            "inputs": [s.describe() for s in self.engine.inputs],
            "outputs": [s.describe() for s in self.engine.outputs],
        }
        info.update(self.engine.describe())
        if self.classify is not None:
            info["labels"] = [str(x) for x in self.classify.labels]
        return info

    def close(self, timeout_s: float | None = None) -> None:
        self.batcher.stop(drain=True, timeout_s=timeout_s)
        self.engine.close()


def _card_for(path: Path) -> ModelCard:
    return load_card(path if path.is_dir() else path.parent)


class _Waiter:
    """Blocks a plain thread until its request's Completion arrives."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._completion: Completion | None = None

    def done(self, completion: Completion) -> None:
        self._completion = completion
        self._event.set()

    def wait(self, timeout_s: float) -> Completion | None:
        return self._completion if self._event.wait(timeout_s) else None


def load_model(config: ModelConfig, **kwargs: Any) -> Any:
    """A ServedModel, or a GenerativeModel when the card's tasks include generate."""
    if kwargs.get("engine") is None and config.path is not None and config.path.exists():
        path, card = locate_model(config.path, config.runtime)
        if "generate" in card.model.tasks:
            from edgeslm.tasks.llm import GenerativeModel

            return GenerativeModel.load(config, path, card)
    return ServedModel.load(config, **kwargs)


class ModelRegistry:
    """Every configured model by name: served, or failed with the reason."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}
        self.configs: dict[str, ModelConfig] = {}

    @classmethod
    def load(cls, configs: Iterable[ModelConfig], **kwargs: Any) -> ModelRegistry:
        """Load each enabled model; a failure is recorded, logged and does not stop the others."""
        registry = cls()
        for config in configs:
            if not config.enabled:
                continue
            registry.configs[config.name] = config
            try:
                registry.models[config.name] = load_model(config, **kwargs)
            except EdgeslmError as exc:
                registry.failed[config.name] = str(exc)
                log.error("model %s failed to load: %s", config.name, exc)
        return registry

    def get(self, name: str | None, task: str | None = None) -> ServedModel:
        """The model called `name` (or the first serving `task` when name is None)."""
        if name is None:
            for model in self.models.values():
                if task is None or task in model.tasks:
                    return model
            raise UnknownModelError(f"no loaded model serves {task}; name one with \"model\"", param="model")
        if name in self.models:
            model = self.models[name]
            if task is not None and task not in model.tasks:
                serving = [m for m, obj in self.models.items() if task in obj.tasks]
                raise BadInputError(
                    f"model {name!r} does not serve {task} (it serves {', '.join(model.tasks)}); "
                    + (f"models that do: {', '.join(serving)}" if serving else "no loaded model does"),
                    param="model", code="wrong_task",
                )
            return model
        if name in self.failed:
            raise ModelNotReadyError(f"model {name!r} is not loaded: {self.failed[name]}", param="model")
        known = ", ".join(sorted([*self.models, *self.failed])) or "none"
        raise UnknownModelError(f"no model named {name!r}; configured models: {known}", param="model")

    @property
    def ready(self) -> bool:
        return not self.failed and bool(self.models)

    def close(self, timeout_s: float | None = None) -> None:
        for model in self.models.values():
            model.close(timeout_s)
