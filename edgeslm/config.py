"""The one settings tree: TOML file, then EDGESLM_<SECTION>_<KEY> environment overrides, validated by pydantic."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edgeslm.errors import ConfigError

SYSTEM_CONFIG_PATH = Path("/etc/edgeslm/edgeslm.toml")
DEFAULT_SOCKET_PATH = Path("run/edgeslm.sock")
ENV_PREFIX = "EDGESLM_"
# Variables that select things rather than override a key.
ENV_RESERVED = {"EDGESLM_CONFIG", "EDGESLM_SOCKET"}
# Names clients and the store use; errors say the rule in words (describe_error).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STORE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_PATTERN_WORDS = {
    NAME_PATTERN: "use letters, digits, '.', '_' and '-' (up to 64, starting with a letter or digit)",
    STORE_NAME_PATTERN: "use lower-case letters, digits, '.', '_' and '-' (up to 64, starting with one of the "
                        "first two), as `edgeslm models --available` lists them",
}


class Settings(BaseModel):
    """Base of every section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _parse_mode(value: Any) -> Any:
    # TOML users write "0660" (a string) or 0o660 (an integer); both mean octal permissions.
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            return int(text, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode; write it like \"0660\"") from None
    return value


class ServerConfig(Settings):
    """Where and how the daemon listens."""

    socket_path: Path = Field(DEFAULT_SOCKET_PATH, description="Unix socket the daemon listens on")
    socket_mode: Annotated[int, Field(ge=0, le=0o777)] = Field(
        0o660, description='permissions of the socket file, octal ("0660")'
    )
    socket_group: str | None = Field(None, description="group that owns the socket file (default: the daemon's)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted; bigger gets 413")
    max_inputs: int = Field(256, ge=1, description="most texts (or rows) one request may carry; more gets 400")
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered by then gets 504")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a connection must send a whole request head within this long of "
        "connecting (or of its first byte after a keep-alive wait), else it is closed, with 408 if it sent part "
        "of one; checked once a second",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request's body must arrive within this long of its head, else 408 "
        "and the connection closes; checked once a second",
    )
    send_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="an answer its client does not read for this long (the connection's send "
        "buffer not draining) is dropped and the connection closed, so unread answers cannot pile up in memory; "
        "checked once a second",
    )
    max_connections: int = Field(
        256, ge=1, le=1_000_000, description="most open connections: past it the longest-idle one is closed to "
        "make room, or, with none idle, the new one gets 503; the open-file limit is raised to fit (or this lowered)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    _mode = field_validator("socket_mode", mode="before")(_parse_mode)


class BatchingConfig(Settings):
    """How the per-model worker forms batches."""

    max_batch: int = Field(32, ge=1, le=4096, description="most rows run in one engine call")
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="after the first request, wait this long for more before running; "
        "0 runs as soon as the engine is free (requests arriving meanwhile form the next batch)",
    )
    max_queue: int = Field(256, ge=1, description="most requests waiting per model; beyond it clients get 503")
    inline_max_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="a request that arrives alone while the engine is idle runs at once on the event loop, "
        "skipping two thread wake-ups, if this model's batches take at most this long; 0 disables",
    )
    call_cost_tokens: float | None = Field(
        None,
        ge=0,
        description="what one engine call costs beyond its tokens, in token slots (rows x positions): texts of "
        "different lengths share a batch only while padding them costs less than this per call saved; unset: "
        "measured at load (a big model costs little per call, so it batches texts of like length; a tiny one "
        "batches nearly everything); 0 batches only equal lengths",
    )


class GenerationConfig(Settings):
    """How a text-generation model runs its sequences (continuous batching over a preallocated KV cache)."""

    max_sequences: int = Field(4, ge=1, le=64, description="sequences generated at once, each with its own KV-cache "
                               "slot; more requests wait in the queue (batching.max_queue)")
    context_tokens: int = Field(2048, ge=16, le=131072, description="most tokens (prompt + output) per sequence; "
                                "each slot's cache is sized for this, and memory is only used as it fills")
    prefill_chunk_tokens: int = Field(256, ge=1, le=8192, description="prompt tokens written per step, so a long "
                                      "prompt delays the other sequences by at most one chunk at a time")
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens of a chat request that sends none "
                                    "(completions default to 16, like OpenAI's); capped by the context left")


class ModelConfig(Settings):
    """One served model."""

    name: str = Field(pattern=NAME_PATTERN, description="name clients use in requests")
    path: Path | None = Field(None, description="model folder (with model.toml) or a .onnx / .tflite file")
    store: str | None = Field(
        None, pattern=STORE_NAME_PATTERN,
        description="a model pulled into the model store (`edgeslm pull NAME`), instead of path; name defaults to it",
    )
    runtime: Literal["auto", "onnx", "tflite"] = Field("auto", description="auto = by file extension")
    threads: int = Field(0, ge=0, le=64, description="intra-op threads; 0 = the runtime's default (all cores)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level"
    )
    providers: tuple[str, ...] = Field(
        ("CPUExecutionProvider",), description="onnxruntime execution providers, in order"
    )
    spin: Literal["off", "run", "always"] = Field(
        "run",
        description="onnxruntime worker threads: run = spin inside a run and sleep when it ends (fastest decode, "
        "no CPU burnt at idle); always = also spin for a while after each run; off = always sleep",
    )
    selfcheck: bool = Field(True, description="run the card's reference check at load; a failing model is not served")
    verify_sha256: bool = Field(True, description="check the file against the card's sha256 at load")
    enabled: bool = Field(True, description="load this model at start-up")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @field_validator("spin", mode="before")
    @classmethod
    def _spin_from_bool(cls, value: Any) -> Any:
        """Earlier configs said `spin = true / false`."""
        return {True: "always", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="before")
    @classmethod
    def _name_from_store(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("store") and "name" not in data:
            return {**data, "name": data["store"]}
        return data

    @model_validator(mode="after")
    def _path_or_store(self) -> ModelConfig:
        if (self.path is None) == (self.store is None):
            raise ValueError("give exactly one of path (a model folder or file) and store (a pulled model's name)")
        return self


def bundled_model_dir(name: str = "intents") -> Path:
    """Folder of a model shipped inside the package (falls back to the source tree's models/)."""
    try:
        from importlib.resources import files

        candidate = Path(str(files("edgeslm.bundled") / name))
        if candidate.is_dir():
            return candidate
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "models" / name


def _default_models() -> list[ModelConfig]:
    return [ModelConfig(name="intents", path=bundled_model_dir("intents"))]


class AccessConfig(Settings):
    """Which local users may use the socket, beyond what its file permissions already allow."""

    allow_uids: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (), description="user ids served; with allow_groups empty too, every peer that can open the socket is "
        "served (root and the daemon's own user always are)",
    )
    allow_groups: tuple[str | int, ...] = Field(
        (), description="group names or ids whose members are served (checked against the peer's groups)"
    )
    log_connections: bool = Field(True, description="log each connection's uid and pid (refusals are always logged)")


class StoreConfig(Settings):
    """Where `edgeslm pull` puts models and where `store = "NAME"` model entries are found."""

    dir: Path | None = Field(
        None, description="model store folder; default $STATE_DIRECTORY/models under systemd "
        "(/var/lib/edgeslm/models), else ~/.local/share/edgeslm/models",
    )


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _parse_size(value: Any) -> Any:
    # Sizes may be written as bytes (4194304) or with a unit ("4MiB", "500 kB").
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; write bytes or e.g. \"4MiB\", \"500kB\", \"1GB\"")
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    return value


class MetricsConfig(Settings):
    """Request and power records on disk, and GET /metrics."""

    enabled: bool = Field(True, description="record requests, sample power and serve GET /metrics; false turns "
                          "all three off")
    dir: Path | None = Field(None, description="folder for the JSONL records; default $LOGS_DIRECTORY when systemd "
                             "sets it (LogsDirectory=), else ./run/metrics")
    flush_interval_s: float = Field(5.0, ge=0.1, le=3600, description="buffered records are written this often "
                                    "and at shutdown (one write per flush, never an fsync per request)")
    rotate_bytes: int = Field(4 * 1024**2, ge=4096, description='start a new file past this size ("4MiB" works)')
    disk_budget_bytes: int = Field(64 * 1024**2, ge=8192, description="all record files together stay under this; "
                                   'the oldest go first ("64MiB" works)')
    compress_rotated: bool = Field(False, description="gzip each file once it is rotated (keeps more history in "
                                   "the budget for a little CPU)")
    sample_hz: float = Field(1.0, gt=0, le=50, description="how often power, temperature, CPU clock and "
                             "throttling are read; request energy is integrated over these samples")
    record_interval_s: float = Field(10.0, ge=0.5, le=3600, description="one summary of the samples (mean and "
                                     "idle watts, hottest zone, throttling) is written per interval")
    power_source: Literal["auto", "pmic", "hwmon", "rapl", "power_supply", "estimated", "none"] = Field(
        "auto", description="auto tries pmic (Pi 5), hwmon (INA2xx/INA3221), rapl, power_supply, then an "
        "estimate from CPU load")
    estimate_idle_w: float | None = Field(None, gt=0, le=1000, description="idle watts for the estimate "
                                          "(default: the board's, from /proc/device-tree/model)")
    estimate_load_w: float | None = Field(None, gt=0, le=1000, description="full-load watts for the estimate")
    hw_root: Path = Field(Path("/"), description="where /sys and /proc are read (a fixture tree in tests)")

    _sizes = field_validator("rotate_bytes", "disk_budget_bytes", mode="before")(_parse_size)

    @model_validator(mode="after")
    def _consistent(self) -> MetricsConfig:
        if self.rotate_bytes * 2 > self.disk_budget_bytes:
            raise ValueError(f"rotate_bytes ({self.rotate_bytes}) must be at most half of disk_budget_bytes "
                             f"({self.disk_budget_bytes}), so a full file can be rotated out within the budget")
        if self.estimate_idle_w and self.estimate_load_w and self.estimate_load_w < self.estimate_idle_w:
            raise ValueError("estimate_load_w must be at least estimate_idle_w")
        return self


class Config(Settings):
    """Everything the daemon reads at start-up."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=_default_models)
    gpio: GpioConfig = Field(default_factory=lambda: GpioConfig())
    voice: VoiceConfig = Field(default_factory=lambda: VoiceConfig())
    access: AccessConfig = Field(default_factory=AccessConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} is used twice; names must be unique")
            seen.add(model.name)
        return models

    @model_validator(mode="after")
    def _place_store_models(self, info: ValidationInfo) -> Config:
        # `store = "NAME"` entries serve the folder NAME of the model store, and voice commands use the store's
        # silero-vad unless told otherwise; the store's default location depends on the environment
        # ($STATE_DIRECTORY under systemd), passed as context.
        vad_default = bool(self.voice.intents) and self.voice.vad.model_path is None
        if not any(m.store for m in self.models) and not vad_default:
            return self
        from edgeslm.store.location import store_dir

        env = (info.context or {}).get("env", os.environ)
        root = store_dir(self.store.dir, env)
        placed = [m.model_copy(update={"path": root / m.store}) if m.store else m for m in self.models]
        update: dict[str, Any] = {"models": placed}
        if vad_default:
            vad = self.voice.vad.model_copy(update={"model_path": root / "silero-vad" / "model.onnx"})
            update["voice"] = self.voice.model_copy(update={"vad": vad})
        return self.model_copy(update=update)

    @model_validator(mode="after")
    def _check_wiring(self) -> Config:
        check_wiring(self)
        return self


# ---- GPIO wiring and voice commands --------------------------------------------------------------------------

def _as_tuple(value: Any) -> Any:
    # `action = { type = "event", ... }` and `action = [{...}, {...}]` both mean a list of actions.
    return (value,) if isinstance(value, dict) else value


class OutputAction(Settings):
    """Drive a GPIO output listed in [[gpio.outputs]]."""

    type: Literal["output"]
    pin: int = Field(ge=0, description="BCM number of a pin listed in [[gpio.outputs]]")
    set: Literal["on", "off", "toggle", "pulse"] = Field(
        "on", description="on/off honour the output's active_high; pulse = on, then off after pulse_ms")
    pulse_ms: float = Field(500.0, gt=0, le=600_000, description="how long a pulse stays on, milliseconds")


class EventAction(Settings):
    """Publish an `event` on GET /v1/events."""

    type: Literal["event"]
    name: str = Field(pattern=NAME_PATTERN, description="the event's name")
    data: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields the event carries")


class CommandAction(Settings):
    """Run a program without a shell; EDGESLM_INTENT / EDGESLM_TRANSCRIPT / EDGESLM_PIN are in its environment."""

    type: Literal["command"]
    argv: tuple[str, ...] = Field(min_length=1, description='program and arguments, e.g. ["/usr/bin/mpc", "play"]')
    timeout_s: float = Field(10.0, gt=0, le=3600, description="the program is killed after this many seconds")


class ClassifyAction(Settings):
    """Classify a fixed text with a served model and publish the result."""

    type: Literal["classify"]
    text: str = Field(min_length=1, description="the text to classify")
    model: str | None = Field(None, description="model name; default: the first loaded model that classifies")


class VoiceAction(Settings):
    """Start voice capture (triggers only)."""

    type: Literal["voice"]
    mode: Literal["press_to_start", "push_to_talk"] = Field(
        "press_to_start", description="press_to_start: trailing silence (VAD) ends the utterance; "
        "push_to_talk: releasing the button ends it (or silence, whichever is first)")


Action = Annotated[OutputAction | EventAction | CommandAction | ClassifyAction | VoiceAction,
                   Field(discriminator="type")]


class GpioTriggerConfig(Settings):
    """An input pin (a button or switch) and what its press does."""

    pin: int = Field(ge=0, description="BCM pin number")
    name: str | None = Field(None, description="label used in events (default: pinN)")
    pull: Literal["up", "down", "off"] = Field("up", description="internal pull resistor")
    edge: Literal["falling", "rising"] = Field(
        "falling", description="the edge that means pressed: falling for a button to ground with pull up, "
        "rising for a button to 3.3 V with pull down")
    bounce_ms: float = Field(20.0, ge=0, le=1000, description="changes closer than this after an edge are bounce")
    hold_ms: float = Field(0.0, ge=0, le=60_000, description="held this long = a hold event; 0 = no hold events")
    action: tuple[Action, ...] = Field((), description="what a press does (one table or a list)")
    hold_action: tuple[Action, ...] = Field((), description="what a hold does (needs hold_ms > 0)")

    _actions = field_validator("action", "hold_action", mode="before")(_as_tuple)


class GpioOutputConfig(Settings):
    """An output pin (an LED, a relay)."""

    pin: int = Field(ge=0, description="BCM pin number")
    name: str | None = Field(None, description="label used in events (default: pinN)")
    active_high: bool = Field(True, description="on = high level; false for a sink-driven LED or an active-low relay")
    initial: bool = Field(False, description="on at start-up")


class GpioConfig(Settings):
    """Buttons, switches and LEDs on the board's header."""

    backend: Literal["auto", "lgpio", "rpigpio", "mock"] = Field(
        "auto", description="auto tries lgpio (Pi 5, any gpiochip), then RPi.GPIO (Pi 4 and older), then mock")
    chip: str | None = Field(
        None, description="lgpio: gpiochip label (or number on other boards); default: label pinctrl-rp1 on a "
        "Pi 5, a pinctrl-bcm* chip on older Pis, else gpiochip0")
    pin_count: int = Field(28, ge=1, le=1024, description="valid BCM numbers are 0..pin_count-1 (28 on a Pi)")
    input_only_pins: tuple[int, ...] = Field((), description="pins that can only be inputs on this board or HAT")
    triggers: list[GpioTriggerConfig] = Field(default_factory=list, description="[[gpio.triggers]]")
    outputs: list[GpioOutputConfig] = Field(default_factory=list, description="[[gpio.outputs]]")
    busy_led_pin: int | None = Field(None, description="output that is on while a model or the voice pipeline works")
    error_led_pin: int | None = Field(None, description="output that shows an error (no microphone, failed action)")
    error_led_s: float = Field(5.0, ge=0, le=3600, description="how long the error LED stays on; 0 = until the "
                               "next voice command succeeds")

    @model_validator(mode="after")
    def _check_pins(self) -> GpioConfig:
        used: dict[int, str] = {}
        entries = [(f"gpio.triggers[{i}]", t.pin) for i, t in enumerate(self.triggers)]
        entries += [(f"gpio.outputs[{i}]", o.pin) for i, o in enumerate(self.outputs)]
        for where, pin in entries:
            if pin >= self.pin_count:
                raise ValueError(f"{where}.pin: pin {pin} is out of range; BCM pins are 0..{self.pin_count - 1} "
                                 "(gpio.pin_count)")
            if pin in used:
                raise ValueError(f"{where}.pin: pin {pin} is already used by {used[pin]}; use each pin once")
            used[pin] = where
        for i, output in enumerate(self.outputs):
            if output.pin in self.input_only_pins:
                raise ValueError(f"gpio.outputs[{i}].pin: pin {output.pin} is input-only on this board "
                                 "(gpio.input_only_pins); wire the output to another pin")
        outputs = {o.pin for o in self.outputs}
        for key in ("busy_led_pin", "error_led_pin"):
            pin = getattr(self, key)
            if pin is not None and pin not in outputs:
                raise ValueError(f"gpio.{key}: pin {pin} is not in [[gpio.outputs]]; add an output entry for it")
        for i, trigger in enumerate(self.triggers):
            if trigger.hold_action and trigger.hold_ms <= 0:
                raise ValueError(f"gpio.triggers[{i}].hold_action needs hold_ms > 0")
        return self


class VadConfig(Settings):
    """Silero VAD: where an utterance starts and ends."""

    model_path: Path | None = Field(None, description="Silero VAD 16 kHz .onnx (default: the model store's "
                                    "silero-vad/model.onnx, from `edgeslm pull silero-vad`)")
    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability that starts speech")
    min_silence_ms: float = Field(500.0, ge=32, le=10_000, description="trailing silence that ends the utterance")
    min_speech_ms: float = Field(96.0, ge=0, le=5000, description="shorter bursts of speech are ignored")
    speech_pad_ms: float = Field(300.0, ge=0, le=2000, description="audio kept before speech starts")
    no_speech_timeout_s: float = Field(4.0, gt=0, le=60, description="give up if nobody speaks within this time")
    threads: int = Field(1, ge=0, le=16, description="onnxruntime threads for the VAD (0 = all cores)")


class SpeechConfig(Settings):
    """Offline speech to text, constrained to the configured phrases."""

    engine: Literal["pocketsphinx"] = Field("pocketsphinx", description="recogniser")
    acoustic_model: Path | None = Field(None, description="acoustic model folder (default: en-us from the wheel)")
    dictionary: Path | None = Field(None, description="pronunciation dictionary (default: cmudict from the wheel)")
    pronunciations: dict[str, str] = Field(
        default_factory=dict, description='extra words, e.g. { edgeslm = "EH JH S L AE M" } (CMU phones)')
    min_frame_score: float = Field(
        -4.0, le=0, description="mean per-frame acoustic log-score of the heard words against the best free "
        "path (0 = perfect); below it the speech is no_match")
    min_word_coverage: float = Field(
        0.7, ge=0, le=1, description="the phrase's words must span at least this share of the speech the VAD "
        "heard; below it the speech held more than the phrase (\"what is the weather like\" heard as \"what "
        "time is it\") and is no_match")
    topn: int = Field(16, ge=1, le=64, description="Gaussians scored per frame: more is more accurate and slower "
                      "(pocketsphinx's own default is 4)")


class IntentConfig(Settings):
    """One voice command: the phrases that say it and what it does."""

    name: str = Field(pattern=NAME_PATTERN,
                      description="intent name (a label of the model when intent_method = classify)")
    phrases: tuple[str, ...] = Field(min_length=1, description="example phrases; the recogniser hears only these")
    action: tuple[Action, ...] = Field((), description="what the intent does (one table or a list)")

    _actions = field_validator("action", mode="before")(_as_tuple)


class VoiceConfig(Settings):
    """Push-to-talk voice commands: capture, VAD, speech, intent, action."""

    device: str = Field("default", description="ALSA capture device (arecord -D), e.g. plughw:1,0")
    sample_rate_hz: Literal[16000] = Field(16000, description="capture rate; VAD and recogniser run at 16 kHz")
    arecord_path: str = Field("arecord", description="the arecord program (alsa-utils)")
    max_seconds: float = Field(8.0, gt=0, le=60, description="an utterance is cut at this length")
    busy_policy: Literal["ignore", "queue"] = Field("ignore", description="a press while busy is ignored or queued")
    max_queued: int = Field(2, ge=1, le=32, description="presses kept when busy_policy = queue")
    intent_method: Literal["classify", "similarity"] = Field(
        "classify", description="classify: the model's labels; similarity: nearest example phrase by embedding")
    intent_model: str = Field("intents", description="served model that classifies or embeds transcripts")
    min_confidence: float = Field(0.5, ge=0, le=1, description="below it the transcript is no_match")
    vad: VadConfig = Field(default_factory=VadConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    intents: list[IntentConfig] = Field(default_factory=list, description="[[voice.intents]]; none = voice off")

    @model_validator(mode="after")
    def _check_intents(self) -> VoiceConfig:
        names: set[str] = set()
        phrases: dict[str, str] = {}
        for i, intent in enumerate(self.intents):
            if intent.name in names:
                raise ValueError(f"voice.intents[{i}].name: {intent.name!r} is used twice; names must be unique")
            names.add(intent.name)
            for j, phrase in enumerate(intent.phrases):
                key = " ".join(phrase.lower().split())
                if key in phrases and phrases[key] != intent.name:
                    raise ValueError(f"voice.intents[{i}].phrases[{j}]: {phrase!r} also belongs to intent "
                                     f"{phrases[key]!r}; a phrase must mean one intent")
                phrases[key] = intent.name
            for j, action in enumerate(intent.action):
                if isinstance(action, VoiceAction):
                    raise ValueError(f"voice.intents[{i}].action[{j}]: a voice action only fits a GPIO trigger")
        return self


# Config names GpioConfig and VoiceConfig before they are defined; resolve them now, so that code reading
# Config.model_fields (the environment overrides) sees the section classes even before any validation.
Config.model_rebuild()


def check_wiring(config: Config) -> None:
    """Cross-section checks: actions name configured outputs; voice triggers need voice intents."""
    outputs = {o.pin for o in config.gpio.outputs}
    places = [(f"gpio.triggers[{i}].{key}", getattr(t, key)) for i, t in enumerate(config.gpio.triggers)
              for key in ("action", "hold_action")]
    places += [(f"voice.intents[{i}].action", intent.action) for i, intent in enumerate(config.voice.intents)]
    for where, actions in places:
        for j, action in enumerate(actions):
            if isinstance(action, OutputAction) and action.pin not in outputs:
                raise ValueError(f"{where}[{j}].pin: pin {action.pin} is not in [[gpio.outputs]]; add an output "
                                 "entry for it")
            if isinstance(action, VoiceAction) and not config.voice.intents:
                raise ValueError(f"{where}[{j}] starts voice capture but [[voice.intents]] is empty; add intents")


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `path.to[key]: what is wrong (got value)`."""
    loc = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in error["loc"]).replace(".[", "[")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key; check its spelling against `edgeslm serve --help` and the README"
    elif error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") in _PATTERN_WORDS:
        message = _PATTERN_WORDS[error["ctx"]["pattern"]]
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    return f"{loc or '(top level)'}: {message}{shown}"


def _env_value(raw: str) -> Any:
    # Values are TOML literals when they parse as one (8, true, 0.5, ["a"]), else plain strings.
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _is_sequence(annotation: Any) -> bool:
    return get_origin(annotation) in (tuple, list)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """The config data with EDGESLM_<SECTION>_<KEY> overrides applied, and which variable set each key.

    A list setting takes a TOML list ('[1000, 1001]'), or commas ('1000,1001'), or one value ('1000').
    """
    sections = {name: field for name, field in Config.model_fields.items() if name != "models"}
    origins: dict[tuple[str, str], str] = {}
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key in ENV_RESERVED:
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        for section, field in sections.items():
            keys = field.annotation.model_fields  # type: ignore[union-attr]
            name = rest[len(section) + 1 :]
            if rest.startswith(section + "_") and name in keys:
                value = _env_value(raw)
                if _is_sequence(keys[name].annotation) and not isinstance(value, list):
                    value = [_env_value(part.strip()) for part in raw.split(",") if part.strip()]
                data.setdefault(section, {})[name] = value
                origins[section, name] = key
                break
        else:
            known = ", ".join(f"EDGESLM_{s.upper()}_<KEY>" for s in sections)
            raise ConfigError(f"environment variable {key} matches no setting; known forms: {known}", param=key)
    return data, origins


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for model in data.get("models", []) or []:
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            path = Path(model["path"]).expanduser()
            model["path"] = path if path.is_absolute() else base / path
    voice = data.get("voice")
    for section, key in (("vad", "model_path"), ("speech", "acoustic_model"), ("speech", "dictionary")):
        table = voice.get(section) if isinstance(voice, dict) else None
        if isinstance(table, dict) and isinstance(table.get(key), str):
            path = Path(table[key]).expanduser()
            table[key] = path if path.is_absolute() else base / path
    store = data.get("store")
    if isinstance(store, dict) and isinstance(store.get("dir"), str):
        store_path = Path(store["dir"]).expanduser()
        store["dir"] = store_path if store_path.is_absolute() else base / store_path
    return data


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or none) and the environment; raise ConfigError naming every bad key."""
    env = os.environ if env is None else env
    drop = "drop --config"
    if path is None and env.get("EDGESLM_CONFIG"):
        path = Path(env["EDGESLM_CONFIG"])
        drop = "unset EDGESLM_CONFIG"
    if path is None and SYSTEM_CONFIG_PATH.is_file():
        path = SYSTEM_CONFIG_PATH
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; create it or {drop}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        data = _resolve_paths(data, Path(path).resolve().parent)
    data, origins = _apply_env(data, env)
    if origins:
        where += ", then the environment"
    try:
        return Config.model_validate(data, context={"env": env})
    except ValidationError as exc:
        lines = "\n  ".join(describe_error(err) + _set_by(err, origins) for err in exc.errors())
        raise ConfigError(f"bad configuration ({where}):\n  {lines}") from None


def _set_by(error: Mapping[str, Any], origins: Mapping[tuple[str, str], str]) -> str:
    loc = tuple(str(part) for part in error["loc"][:2])
    return f" [set by {origins[loc]}]" if len(loc) == 2 and loc in origins else ""  # type: ignore[index]
