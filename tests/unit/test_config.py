"""Config: TOML + environment, errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslm.config import DEFAULT_SOCKET_PATH, load_config
from edgeslm.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgeslm.toml"
    path.write_text(text)
    return path


def test_defaults_serve_the_bundled_model_on_run_socket():
    config = load_config(None, env={})
    assert config.server.socket_path == DEFAULT_SOCKET_PATH
    assert config.server.socket_mode == 0o660
    assert [m.name for m in config.models] == ["intents"]
    assert (config.models[0].path / "model.toml").is_file()


def test_connection_limits_default_and_read_from_the_environment():
    server = load_config(None, env={}).server
    assert (server.header_timeout_s, server.body_timeout_s, server.max_connections) == (10.0, 30.0, 256)
    server = load_config(None, env={"EDGESLM_SERVER_MAX_CONNECTIONS": "8",
                                    "EDGESLM_SERVER_HEADER_TIMEOUT_S": "0.5"}).server
    assert (server.max_connections, server.header_timeout_s) == (8, 0.5)


def test_file_values_and_relative_model_paths(tmp_path):
    path = write(tmp_path, '[server]\nsocket_path = "/tmp/x.sock"\nsocket_mode = "0600"\n'
                           '[[models]]\nname = "a"\npath = "models/a"\n[models.batching]\nmax_batch = 4\n')
    config = load_config(path, env={})
    assert config.server.socket_mode == 0o600
    assert config.models[0].path == tmp_path / "models/a"
    assert config.models[0].batching.max_batch == 4


def test_env_overrides_file(tmp_path):
    path = write(tmp_path, '[server]\nmax_inputs = 5\n')
    config = load_config(path, env={"EDGESLM_SERVER_MAX_INPUTS": "7", "EDGESLM_SERVER_SOCKET_PATH": "/tmp/e.sock"})
    assert config.server.max_inputs == 7
    assert str(config.server.socket_path) == "/tmp/e.sock"


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[server]\nmax_inputs = 0\n', "server.max_inputs"),
        ('[server]\nsokcet_path = "x"\n', "server.sokcet_path: unknown key"),
        ('[server]\nsocket_mode = "rw-rw----"\n', "octal"),
        ('[[models]]\nname = "a"\npath = "x"\nruntime = "tensorrt"\n', "models[0].runtime"),
        ('[[models]]\nname = "a"\npath = "x"\n[[models]]\nname = "a"\npath = "y"\n', "used twice"),
        ('[server\n', "not valid TOML"),
        ('[[models]]\nname = "a"\npath = "x"\nspin = "fast"\n', "models[0].spin"),
        ('[server]\nheader_timeout_s = 0\n', "server.header_timeout_s"),
        ('[server]\nbody_timeout_s = -1\n', "server.body_timeout_s"),
        ('[server]\nmax_connections = 0\n', "server.max_connections"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert needle in str(info.value)


def test_bad_value_shows_what_was_given_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[[models]]\nname = "a"\npath = "x"\nruntime = "tensorrt"\n'), env={})
    message = str(info.value)
    assert "'tensorrt'" in message and "'onnx'" in message


def test_unknown_env_variable_is_refused():
    with pytest.raises(ConfigError, match="EDGESLM_SERVR_MAX_INPUTS"):
        load_config(None, env={"EDGESLM_SERVR_MAX_INPUTS": "3"})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_settings_are_frozen():
    config = load_config(None, env={})
    with pytest.raises(ValueError):
        config.server.max_inputs = 3  # type: ignore[misc]


@pytest.mark.parametrize(("given", "mode"),
                         [(None, "run"), ("true", "always"), ("false", "off"), ('"always"', "always")])
def test_spin_defaults_to_spinning_inside_runs_and_reads_old_booleans(tmp_path, given, mode):
    line = f"spin = {given}\n" if given else ""
    config = load_config(write(tmp_path, f'[[models]]\nname = "a"\npath = "x"\n{line}'), env={})
    assert config.models[0].spin == mode


@pytest.mark.parametrize("raw, uids", [("1000", (1000,)), ("1000, 1001", (1000, 1001)), ("[1000, 1001]", (1000, 1001))])
def test_a_list_setting_from_the_environment_takes_one_value_commas_or_a_toml_list(raw, uids):
    assert load_config(env={"EDGESLM_ACCESS_ALLOW_UIDS": raw}).access.allow_uids == uids


def test_a_bad_environment_value_names_its_variable():
    with pytest.raises(ConfigError) as caught:
        load_config(env={"EDGESLM_SERVER_MAX_INPUTS": "abc"})
    message = str(caught.value)
    assert "(defaults, then the environment)" in message
    assert "server.max_inputs:" in message and "[set by EDGESLM_SERVER_MAX_INPUTS]" in message


def test_a_missing_config_from_the_environment_says_to_unset_it(tmp_path):
    with pytest.raises(ConfigError, match="create it or unset EDGESLM_CONFIG"):
        load_config(env={"EDGESLM_CONFIG": str(tmp_path / "absent.toml")})
    with pytest.raises(ConfigError, match="create it or drop --config"):
        load_config(tmp_path / "absent.toml", env={})


def test_client_commands_refuse_a_named_config_that_is_bad(tmp_path, monkeypatch):
    from edgeslm.client import find_socket

    monkeypatch.delenv("EDGESLM_SOCKET", raising=False)
    monkeypatch.delenv("EDGESLM_CONFIG", raising=False)
    typo = tmp_path / "typo.toml"
    typo.write_text('[server]\nsocket_pth = "x"\n')
    with pytest.raises(ConfigError, match="server.socket_pth: unknown key"):
        find_socket(config_path=typo)
    with pytest.raises(ConfigError, match="does not exist"):
        find_socket(config_path=tmp_path / "absent.toml")
    monkeypatch.setenv("EDGESLM_CONFIG", str(typo))
    with pytest.raises(ConfigError, match="unknown key"):
        find_socket()
    good = tmp_path / "good.toml"
    good.write_text(f'[server]\nsocket_path = "{tmp_path / "d.sock"}"\n')
    assert find_socket(config_path=good) == tmp_path / "d.sock"
