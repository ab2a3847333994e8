"""[gpio] and [voice] settings: every misconfiguration stops start-up naming the entry and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslm.config import CommandAction, OutputAction, load_config
from edgeslm.errors import ConfigError

TRIGGER = '[[gpio.triggers]]\npin = 17\naction = { type = "voice" }\n'
OUTPUT = "[[gpio.outputs]]\npin = {pin}\n"
INTENT = '[[voice.intents]]\nname = "lights_on"\nphrases = ["turn on the light"]\n'
VAD = '[voice.vad]\nmodel_path = "vad.onnx"\n'


def load(tmp_path: Path, text: str):
    path = tmp_path / "edgeslm.toml"
    path.write_text(text)
    return load_config(path, env={})


@pytest.mark.parametrize("text, message", [
    (OUTPUT.format(pin=17) + OUTPUT.format(pin=17),
     "gpio.outputs[1].pin: pin 17 is already used by gpio.outputs[0]"),
    ('[[gpio.triggers]]\npin = 27\n' + OUTPUT.format(pin=27),
     "gpio.outputs[0].pin: pin 27 is already used by gpio.triggers[0]"),
    ('[[gpio.triggers]]\npin = 40\n', "gpio.triggers[0].pin: pin 40 is out of range; BCM pins are 0..27"),
    ("[gpio]\ninput_only_pins = [6]\n" + OUTPUT.format(pin=6),
     "gpio.outputs[0].pin: pin 6 is input-only on this board"),
    ("[gpio]\nbusy_led_pin = 23\n", "gpio.busy_led_pin: pin 23 is not in [[gpio.outputs]]"),
    ('[[gpio.triggers]]\npin = 4\naction = { type = "output", pin = 9 }\n',
     "gpio.triggers[0].action[0].pin: pin 9 is not in [[gpio.outputs]]"),
    (TRIGGER, "gpio.triggers[0].action[0] starts voice capture but [[voice.intents]] is empty"),
    ('[[gpio.triggers]]\npin = 4\nhold_action = { type = "event", name = "x" }\n',
     "gpio.triggers[0].hold_action needs hold_ms > 0"),
    (VAD + INTENT + '[[voice.intents]]\nname = "lights_off"\nphrases = ["Turn on the  light"]\n',
     "voice.intents[1].phrases[0]: 'Turn on the  light' also belongs to intent 'lights_on'"),
    (VAD + INTENT + '[[voice.intents]]\nname = "x"\nphrases = ["stop"]\naction = { type = "voice" }\n',
     "voice.intents[1].action[0]: a voice action only fits a GPIO trigger"),
    ('[gpio]\nbackend = "pigpio"\n', "gpio.backend: Input should be 'auto', 'lgpio', 'rpigpio' or 'mock'"),
    ('[[gpio.triggers]]\npin = 4\naction = { type = "output", pin = 9, set = "blink" }\n',
     "gpio.triggers[0].action[0].output.set: Input should be 'on', 'off', 'toggle' or 'pulse'"),
])
def test_misconfiguration_names_the_entry(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value), str(info.value)


def test_voice_uses_the_stores_silero_vad_unless_told_otherwise(tmp_path):
    path = tmp_path / "edgeslm.toml"
    path.write_text(f'[store]\ndir = "{tmp_path / "store"}"\n' + INTENT)
    assert load_config(path, {}).voice.vad.model_path == tmp_path / "store" / "silero-vad" / "model.onnx"
    path.write_text(VAD + INTENT)
    assert load_config(path, {}).voice.vad.model_path.name != "model.onnx"


def test_a_full_wiring_loads_with_paths_relative_to_the_file(tmp_path):
    config = load(tmp_path, TRIGGER + OUTPUT.format(pin=27) + VAD + INTENT
                  + 'action = [{ type = "output", pin = 27 }, { type = "command", argv = ["/bin/true"] }]\n')
    assert config.voice.vad.model_path == tmp_path / "vad.onnx"
    actions = config.voice.intents[0].action
    assert isinstance(actions[0], OutputAction) and actions[0].set == "on"
    assert isinstance(actions[1], CommandAction) and actions[1].timeout_s == 10
    assert config.gpio.triggers[0].action[0].mode == "press_to_start"


def test_environment_overrides_gpio_and_voice_keys(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text("")
    config = load_config(path, env={"EDGESLM_GPIO_BACKEND": "mock", "EDGESLM_VOICE_DEVICE": "plughw:1,0"})
    assert config.gpio.backend == "mock" and config.voice.device == "plughw:1,0"


def test_serve_exits_78_on_a_bad_wiring(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(OUTPUT.format(pin=17) + OUTPUT.format(pin=17))
    done = subprocess.run([sys.executable, "-m", "edgeslm", "serve", "--config", str(path), "--socket",
                           str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert "gpio.outputs[1].pin: pin 17 is already used by gpio.outputs[0]; use each pin once" in done.stderr


def test_serve_exits_78_when_the_vad_model_is_not_pulled(tmp_path):
    path = tmp_path / "voice.toml"
    path.write_text(f'[store]\ndir = "{tmp_path / "store"}"\n[gpio]\nbackend = "mock"\n' + INTENT)
    done = subprocess.run([sys.executable, "-m", "edgeslm", "serve", "--config", str(path), "--socket",
                           str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    assert "voice.vad.model_path" in done.stderr and "edgeslm pull silero-vad" in done.stderr


@pytest.mark.parametrize("variable, value, expect", [
    ("EDGESLM_METRICS_ENABLED", "false", "metrics.enabled=False"),
    ("EDGESLM_STORE_DIR", "/srv/s", "store.dir=/srv/s"),
    ("EDGESLM_GPIO_BACKEND", "mock", "gpio.backend=mock"),
])
def test_environment_overrides_work_in_a_fresh_interpreter(tmp_path, variable, value, expect):
    # In a process that has validated no Config yet (as `edgeslm serve` is), every section must resolve:
    # the sections defined after Config once read as forward references and crashed the override lookup.
    code = ("from edgeslm.config import load_config; c = load_config()\n"
            "print(f'metrics.enabled={c.metrics.enabled} store.dir={c.store.dir} gpio.backend={c.gpio.backend}')")
    (tmp_path / "empty.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
    env |= {"EDGESLM_CONFIG": str(tmp_path / "empty.toml"), variable: value}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout


@pytest.mark.parametrize("specs, says", [
    (["bad name={intents}"], "--model bad name={intents}: name: use letters, digits, '.', '_' and '-'"),
    (["{spaced}"], "(the name comes from the folder or file; give one as NAME=PATH)"),
    (["x="], "--model 'x=': no path"),
    (["a={intents}", "a={intents}"], "the name 'a' is already taken by --model a={intents}"),
])
def test_bad_model_flags_are_config_errors_naming_the_flag(tmp_path, specs, says):
    from edgeslm.cli.serve import models_from_flags

    intents = Path(__file__).resolve().parents[2] / "models" / "intents"
    spaced = tmp_path / "my model"
    spaced.mkdir()
    with pytest.raises(ConfigError) as caught:
        models_from_flags([s.format(intents=intents, spaced=spaced) for s in specs], "auto")
    assert says.format(intents=intents) in str(caught.value)
