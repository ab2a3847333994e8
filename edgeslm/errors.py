"""Every error edgeslm raises on purpose: one root, leaves that say what was wrong and how to fix it."""

from __future__ import annotations


class EdgeslmError(Exception):
    """Root of edgeslm's errors.

    `code` is a short machine-readable slug (it travels in the JSON error body);
    `param` names the offending field when there is one.
    """

    code = "edgeslm_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(EdgeslmError, ValueError):
    """The configuration file or environment holds a value edgeslm cannot use."""

    code = "bad_config"


class ModelLoadError(EdgeslmError):
    """A model could not be loaded: missing or corrupt file, unknown runtime, bad card."""

    code = "model_load_failed"


class SelfCheckError(ModelLoadError):
    """A model loaded but gave the wrong answer on its card's reference input."""

    code = "selfcheck_failed"


class RuntimeMissingError(ModelLoadError, ImportError):
    """The inference runtime a model needs is not installed."""

    code = "runtime_missing"


class BadInputError(EdgeslmError, ValueError):
    """A client sent something the model cannot take (wrong shape, too long, empty...)."""

    code = "invalid_input"


class BodyTooLargeError(BadInputError):
    """The request body is larger than `server.max_body_bytes`."""

    code = "body_too_large"


class UnknownModelError(EdgeslmError, LookupError):
    """No model of that name is configured."""

    code = "model_not_found"


class ModelNotReadyError(EdgeslmError):
    """The model is configured but failed to load (or is still loading)."""

    code = "model_not_ready"


class OverloadedError(EdgeslmError):
    """The model's queue is full; the client should retry after `retry_after_s`."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDownError(OverloadedError):
    """The daemon is draining and takes no new work."""

    code = "shutting_down"


class CancelledError(EdgeslmError):
    """The request was cancelled (its client went away) before it ran."""

    code = "cancelled"


class DeadlineError(EdgeslmError, TimeoutError):
    """The request did not finish within `server.request_timeout_s`."""

    code = "deadline_exceeded"


class SocketInUseError(EdgeslmError, OSError):
    """Another live process is listening on the socket path."""

    code = "socket_in_use"


class DaemonUnreachableError(EdgeslmError, ConnectionError):
    """The CLI could not reach a daemon on the socket."""

    code = "daemon_unreachable"


class GpioError(EdgeslmError):
    """A GPIO pin could not be claimed, read or driven."""

    code = "gpio_error"


class GpioUnavailableError(GpioError, ImportError):
    """The chosen GPIO backend cannot run here (library missing, no chip, not a Raspberry Pi)."""

    code = "gpio_unavailable"


class NotMockError(BadInputError):
    """Something only the mock GPIO backend can do (a simulated press) was asked of real hardware."""

    code = "not_mock_backend"


class MicrophoneError(EdgeslmError):
    """Audio capture failed: no microphone, the device is busy, or arecord is missing."""

    code = "mic_unavailable"


class AudioFormatError(BadInputError):
    """Uploaded audio is not a WAV the voice pipeline takes (16-bit PCM, mono, 16 kHz)."""

    code = "invalid_audio"


class VoiceUnavailableError(EdgeslmError):
    """The voice pipeline is not configured (no [[voice.intents]]) or failed to start."""

    code = "voice_unavailable"
class StoreError(EdgeslmError):
    """The model store could not do what was asked (pull, remove, find a model)."""

    code = "store_error"


class UnknownRecipeError(StoreError, LookupError):
    """No recipe of that name is in the catalogue."""

    code = "unknown_recipe"


class NotPulledError(StoreError, LookupError):
    """The model is in the catalogue but has not been pulled into this store."""

    code = "not_pulled"


class PullError(StoreError):
    """Fetching, converting or checking a model failed; nothing was left in the store."""

    code = "pull_failed"


class QuantizeError(EdgeslmError):
    """`edgeslm quantize` cannot quantize this model or read its reference inputs."""

    code = "quantize_failed"
class SensorError(EdgeslmError):
    """A power, temperature or throttling source is absent or gave a value that cannot be used."""

    code = "sensor_unavailable"


class MissingExtraError(EdgeslmError, ImportError):
    """A command needs an optional extra that is not installed (the message names the pip command)."""

    code = "missing_extra"
