"""The one settings tree: TOML file, then EDGESLM_<SECTION>_<KEY> environment overrides, validated by pydantic."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeslm.errors import ConfigError

SYSTEM_CONFIG_PATH = Path("/etc/edgeslm/edgeslm.toml")
DEFAULT_SOCKET_PATH = Path("run/edgeslm.sock")
ENV_PREFIX = "EDGESLM_"
# Variables that select things rather than override a key.
ENV_RESERVED = {"EDGESLM_CONFIG", "EDGESLM_SOCKET"}


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


class ModelConfig(Settings):
    """One served model."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="name clients use in requests")
    path: Path = Field(description="model folder (with model.toml) or a .onnx / .tflite file")
    runtime: Literal["auto", "onnx", "tflite"] = Field("auto", description="auto = by file extension")
    threads: int = Field(0, ge=0, le=64, description="intra-op threads; 0 = the runtime's default (all cores)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level"
    )
    providers: tuple[str, ...] = Field(
        ("CPUExecutionProvider",), description="onnxruntime execution providers, in order"
    )
    spin: bool = Field(
        False, description="let onnxruntime worker threads spin between runs (faster on idle cores, burns CPU)"
    )
    selfcheck: bool = Field(True, description="run the card's reference check at load; a failing model is not served")
    verify_sha256: bool = Field(True, description="check the file against the card's sha256 at load")
    enabled: bool = Field(True, description="load this model at start-up")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)


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


class Config(Settings):
    """Everything the daemon reads at start-up."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=_default_models)
    access: AccessConfig = Field(default_factory=AccessConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} is used twice; names must be unique")
            seen.add(model.name)
        return models


def _describe(error: Mapping[str, Any]) -> str:
    loc = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in error["loc"]).replace(".[", "[")
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key; check its spelling against `edgeslm serve --help` and the README"
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    return f"{loc or '(top level)'}: {message}{shown}"


def _env_value(raw: str) -> Any:
    # Values are TOML literals when they parse as one (8, true, 0.5, ["a"]), else plain strings.
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    sections = {name: field for name, field in Config.model_fields.items() if name != "models"}
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key in ENV_RESERVED:
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        for section, field in sections.items():
            keys = field.annotation.model_fields  # type: ignore[union-attr]
            if rest.startswith(section + "_") and rest[len(section) + 1 :] in keys:
                data.setdefault(section, {})[rest[len(section) + 1 :]] = _env_value(raw)
                break
        else:
            known = ", ".join(f"EDGESLM_{s.upper()}_<KEY>" for s in sections)
            raise ConfigError(f"environment variable {key} matches no setting; known forms: {known}", param=key)
    return data


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for model in data.get("models", []) or []:
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            path = Path(model["path"]).expanduser()
            model["path"] = path if path.is_absolute() else base / path
    return data


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or none) and the environment; raise ConfigError naming every bad key."""
    env = os.environ if env is None else env
    if path is None and env.get("EDGESLM_CONFIG"):
        path = Path(env["EDGESLM_CONFIG"])
    if path is None and SYSTEM_CONFIG_PATH.is_file():
        path = SYSTEM_CONFIG_PATH
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; create it or drop --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        data = _resolve_paths(data, Path(path).resolve().parent)
    data = _apply_env(data, env)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"bad configuration ({where}):\n  {lines}") from None
