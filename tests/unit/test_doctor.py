"""`edgeslm doctor` against fixture roots: a healthy Pi 5, broken permissions, corrupt models, no hardware."""

from __future__ import annotations

import grp
import json
import os
import shutil
from pathlib import Path

import pytest

from edgeslm.cli import main
from edgeslm.doctor import Context, Identity, run_checks
from edgeslm.doctor.host import check_audio, check_gpio, check_power, check_runtimes
from edgeslm.doctor.service import check_config, check_memory, check_models, check_socket
from edgeslm.errors import GpioUnavailableError
from edgeslm.hw.commands import RecordedCommands

ROOT = Path(__file__).resolve().parents[2]
PI5_VCGENCMD = RecordedCommands.from_dir(ROOT / "tests/fixtures/hw/pi5")  # recorded `vcgencmd pmic_read_adc`
INTENTS = ROOT / "models" / "intents"
STORE = "/var/lib/edgeslm/models/intents"  # where the fixture roots keep their copy of the bundled model
SERVICE = Identity("edgeslm", uid=999, gids=frozenset({999, 997, 29}))  # gpio 997, audio 29


def write(path: Path, text: str | bytes = "", mode: int | None = None, gid: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    if mode is not None:
        path.chmod(mode)
    if gid is not None:
        os.chown(path, 0, gid)
    return path


@pytest.fixture
def pi5(tmp_path) -> Path:
    """A Raspberry Pi 5 as the doctor would see it: chips for group gpio, a USB mic, an INA219, 3.5 GB free."""
    root = tmp_path / "pi5"
    write(root / "proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\0")
    for n in (0, 4):
        write(root / f"dev/gpiochip{n}", mode=0o660, gid=997)
    write(root / "dev/vcio", mode=0o660)
    write(root / "proc/asound/pcm", "00-00: bcm2835 HDMI 1 : bcm2835 HDMI 1 : playback 8\n"
                                    "01-00: USB Audio : USB Audio : playback 1 : capture 1\n")
    write(root / "dev/snd/pcmC1D0c", mode=0o660, gid=29)
    write(root / "sys/class/hwmon/hwmon2/name", "ina219\n")
    write(root / "sys/class/hwmon/hwmon2/power1_input", "2875000\n")
    write(root / "proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    3500000 kB\n")
    shutil.copytree(INTENTS, root / STORE.lstrip("/"), ignore=shutil.ignore_patterns("*.py", "*.md"))
    return root


def ctx(root: Path, config: Path | None = None, modules=("lgpio", "gpiozero"), **kwargs) -> Context:
    context = Context(root=root, config_path=config, user=SERVICE, module_present=lambda name: name in modules,
                      **kwargs)
    check_config(context)
    return context


def config_file(tmp_path: Path, model_dir: Path | str = STORE, extra: str = "") -> Path:
    return write(tmp_path / "edgeslm.toml", f'[[models]]\nname = "intents"\npath = "{model_dir}"\n{extra}')


def test_a_healthy_pi5_passes_every_hardware_check(pi5, tmp_path):
    context = ctx(pi5, config_file(tmp_path))
    gpio, audio, power = check_gpio(context), check_audio(context), check_power(context)
    assert gpio.status == "ok" and "gpiochip0, gpiochip4 usable by edgeslm" in gpio.summary
    assert "another root: not opened" in gpio.summary
    assert audio.status == "ok" and "USB Audio" in audio.summary
    assert power.status == "ok" and power.summary == "measured by hwmon: ina219:1"  # no vcgencmd: the INA219
    with_pmic = check_power(ctx(pi5, config_file(tmp_path), run=PI5_VCGENCMD))
    assert with_pmic.status == "ok" and with_pmic.summary.startswith("measured by pmic") and "also found: hwmon" in \
        with_pmic.summary, with_pmic
    assert check_memory(context).status == "ok"
    assert check_models(context).status == "ok"


def test_gpio_chips_the_service_user_cannot_open(pi5, tmp_path):
    (pi5 / "dev/gpiochip4").chmod(0o600)
    finding = check_gpio(ctx(pi5))
    assert finding.status == "fail" and "cannot open gpiochip4" in finding.summary
    assert "usermod -aG gpio edgeslm" in finding.fix


def test_gpio_chips_without_a_library(pi5):
    finding = check_gpio(ctx(pi5, modules=()))
    assert finding.status == "fail" and finding.fix.startswith("pip install lgpio")


class FakeBackend:
    closed = False

    def describe(self):
        return {"backend": "lgpio", "chip": "gpiochip4", "label": "pinctrl-rp1"}

    def close(self):
        FakeBackend.closed = True


def test_a_backend_must_really_open(pi5):
    from edgeslm.errors import GpioUnavailableError

    def broken(name):
        raise GpioUnavailableError(f"{name} says no")

    context = ctx(pi5, open_gpio=broken)
    failed = check_gpio(context)
    assert failed.status == "fail" and "lgpio: lgpio says no; rpigpio: rpigpio says no" in failed.summary
    context.open_gpio = lambda name: FakeBackend()
    works = check_gpio(context)
    assert works.status == "ok" and "lgpio (chip gpiochip4, label pinctrl-rp1) opens" in works.summary
    assert FakeBackend.closed


def test_a_pi_without_gpio_chips_fails_and_a_pc_only_warns(pi5, tmp_path):
    for chip in (pi5 / "dev").glob("gpiochip*"):
        chip.unlink()
    assert check_gpio(ctx(pi5)).status == "fail"
    assert check_gpio(ctx(tmp_path / "pc")).status == "warn"


def test_audio_without_capture_and_without_sound(pi5, tmp_path):
    write(pi5 / "proc/asound/pcm", "00-00: bcm2835 HDMI 1 : bcm2835 HDMI 1 : playback 8\n")
    assert check_audio(ctx(pi5)).summary == "sound devices found, but none can record"
    assert check_audio(ctx(tmp_path / "empty")).status == "warn"


def test_power_sources_rapl_and_battery_and_none(tmp_path):
    root = tmp_path / "laptop"  # the metrics fixtures' RAPL zones and battery gauge together
    for fixture in ("rapl", "power_supply"):
        shutil.copytree(ROOT / "tests/fixtures/hw" / fixture, root, dirs_exist_ok=True)
    write(root / "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\n")
    finding = check_power(ctx(root))
    assert finding.status == "ok" and finding.summary.startswith("measured by rapl") and \
        "also found: power_supply" in finding.summary, finding
    write(tmp_path / "pc/proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\n")
    estimated = check_power(ctx(tmp_path / "pc"))
    assert estimated.status == "warn" and "energy is estimated" in estimated.summary, estimated
    assert "pmic:" in estimated.explanation and "hwmon:" in estimated.explanation  # why each meter was not used
    assert check_power(ctx(tmp_path / "bare")).status == "warn"  # not even /proc/stat: nothing works
    chosen = tmp_path / "pmic.toml"
    chosen.write_text('[metrics]\npower_source = "pmic"\n')
    assert check_power(ctx(tmp_path / "pc", chosen)).status == "fail"  # the configured source does not work here
    chosen.write_text('[metrics]\npower_source = "none"\n')
    assert check_power(ctx(tmp_path / "pc", chosen)).summary == 'not measured (metrics.power_source = "none")'


def test_a_corrupt_model_fails_with_a_fix(pi5, tmp_path):
    model = pi5 / STORE.lstrip("/") / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    finding = check_models(ctx(pi5, config_file(tmp_path)))
    assert finding.status == "fail" and "does not match the sha256" in finding.summary
    assert "edgeslm pull" in finding.fix


def test_a_missing_model_and_a_bad_config(pi5, tmp_path):
    assert check_models(ctx(pi5, config_file(tmp_path, "/nowhere"))).status == "fail"
    bad = write(tmp_path / "bad.toml", '[server]\nsocket_mode = "rwx"\n')
    context = Context(root=pi5, config_path=bad, user=SERVICE)
    finding = check_config(context)
    assert finding.status == "fail" and "exit 78" in finding.explanation
    assert check_models(context).status == "warn" and check_socket(context).status == "warn"


def test_memory_too_small_and_too_small_for_a_reload(pi5, tmp_path):
    size_kb = (INTENTS / "model.onnx").stat().st_size // 1024
    write(pi5 / "proc/meminfo", "MemAvailable:      100000 kB\n")
    assert check_memory(ctx(pi5, config_file(tmp_path))).status == "fail"
    write(pi5 / "proc/meminfo", f"MemAvailable: {150 * 1024 + size_kb + size_kb // 2} kB\n")
    assert check_memory(ctx(pi5, config_file(tmp_path))).status == "warn"


def test_socket_path_that_cannot_be_created(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    context = ctx(tmp_path, config_file(tmp_path, extra=f'\n[server]\nsocket_path = "{locked}/s/e.sock"\n'))
    assert check_socket(context).status == "fail"
    context.user = Identity("root", 0, frozenset({0}))
    assert check_socket(context).status == "ok"


def test_a_runtime_built_for_another_numpy_is_named():
    def importer(name):
        if name == "onnxruntime":
            raise ImportError("numpy.core.multiarray failed to import")
        raise ImportError(f"No module named {name!r}")

    finding = check_runtimes(Context(import_module=importer))
    assert finding.status == "fail" and "cannot run with numpy" in finding.summary and "numpy<2" in finding.fix


def test_run_checks_only_selected_and_the_cli_exit_codes(pi5, tmp_path, capsys):
    findings = run_checks(ctx(pi5, config_file(tmp_path)), ["gpio", "memory"])
    assert [f.check for f in findings] == ["gpio", "memory"]
    good = config_file(tmp_path)
    assert main(["doctor", "--root", str(pi5), "--config", str(good), "--only", "config,models,memory"]) == 0
    assert "0 failed" in capsys.readouterr().out
    bad = write(tmp_path / "bad.toml", "[server]\nbogus = 1\n")
    assert main(["doctor", "--root", str(pi5), "--config", str(bad), "--only", "config", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report[0]["status"] == "fail" and "server.bogus" in report[0]["summary"] and report[0]["fix"]
    assert main(["doctor", "--only", "nonsense"]) == 78


def test_identity_of_an_unknown_user_falls_back_to_the_caller():
    me = Identity.of("no-such-user-here")
    assert me.uid == os.geteuid()
    assert grp.getgrgid(os.getegid()).gr_gid in me.gids


def test_store_models_are_looked_for_where_the_service_keeps_them(pi5, tmp_path):
    write(pi5 / "etc/systemd/system/edgeslm.service", "[Service]\nStateDirectory=edgeslm\n")
    config = write(tmp_path / "store.toml", '[[models]]\nstore = "intents"\n')
    found = check_models(ctx(pi5, config, env={}))
    assert found.status == "ok" and found.summary.startswith("intents (store intents, model.onnx"), found
    missing = write(tmp_path / "missing.toml", '[[models]]\nstore = "minilm-l6"\n')
    finding = check_models(ctx(pi5, missing, env={}))
    assert finding.status == "fail" and "'minilm-l6' is not pulled into the model store /var/lib/edgeslm/models" \
        in finding.summary, finding
    assert "edgeslm pull --store /var/lib/edgeslm/models minilm-l6" in finding.summary


NO_GROUP = "edgeslm-no-such-group"
VOICE = ('[gpio]\nbackend = "mock"\n[store]\ndir = "/var/lib/edgeslm/models"\n'
         '[[voice.intents]]\nname = "lights_on"\nphrases = ["turn on the light"]\n')


def test_a_socket_group_that_does_not_exist_fails_as_serve_does(pi5, tmp_path):
    with pytest.raises(KeyError):
        grp.getgrnam(NO_GROUP)
    server = f'\n[server]\nsocket_path = "{tmp_path}/s/e.sock"\nsocket_group = "{NO_GROUP}"\n'
    config = config_file(tmp_path, extra=server)
    finding = check_socket(ctx(pi5, config))
    assert finding.status == "fail", finding
    assert finding.summary == f"server.socket_group '{NO_GROUP}' is not a group on this system; create it " \
                              "(groupadd) or drop the setting"  # serve's own words (edgeslm.server.listen)
    assert "exits 78" in finding.explanation
    mine = grp.getgrgid(os.getegid()).gr_name
    config.write_text(config.read_text().replace(NO_GROUP, mine))
    context = ctx(pi5, config)
    context.user = Identity("root", 0, frozenset({0}))  # may create the socket's folder under tmp_path
    assert check_socket(context).status == "ok"
    assert not (tmp_path / "s").exists()  # the probe socket went into a temp folder of its own


def test_an_access_group_that_does_not_exist_fails_the_config(pi5, tmp_path):
    config = config_file(tmp_path, extra=f'\n[access]\nallow_groups = ["{NO_GROUP}"]\n')
    context = Context(root=pi5, config_path=config, user=SERVICE)
    finding = check_config(context)
    assert finding.status == "fail" and f"access.allow_groups names '{NO_GROUP}'" in finding.summary
    assert context.config is not None  # the file itself loaded: the other checks still run


def test_voice_without_the_vad_model_fails_as_serve_does(pi5, tmp_path, capsys):
    from edgeslm.doctor.service import check_voice

    config = write(tmp_path / "voice.toml", VOICE)
    finding = check_voice(ctx(pi5, config))
    assert finding.status == "fail" and finding.summary.startswith("voice.vad.model_path: ")
    assert "silero-vad/model.onnx does not exist" in finding.summary and "exits 78" in finding.explanation
    assert finding.fix.startswith("sudo edgeslm pull --store /var/lib/edgeslm/models silero-vad")
    assert main(["doctor", "--root", str(pi5), "--config", str(config), "--only", "config,voice"]) == 1
    assert "1 failed" in capsys.readouterr().out
    write(config, VOICE.replace("turn on the light", "turn on the frobnicator"))
    both = check_voice(ctx(pi5, config))  # every problem, not only the first serve would stop at
    assert both.summary.startswith("voice.vad.model_path: ") and "the word 'frobnicator' is not" in both.summary
    assert both.fix.startswith("sudo edgeslm pull") and "[voice.speech.pronunciations]" in both.fix


def test_voice_with_a_vad_that_loads(pi5, tmp_path):
    from edgeslm.doctor.service import check_voice

    opened = []

    class FakeVad:
        def close(self):
            opened.append("closed")

    def open_vad(path, threads):
        opened.append(path)
        return FakeVad()

    config = write(tmp_path / "voice.toml", VOICE)
    finding = check_voice(ctx(pi5, config, open_vad=open_vad))
    assert finding.status == "ok" and "1 intent(s)" in finding.summary
    assert opened == [pi5 / "var/lib/edgeslm/models/silero-vad/model.onnx", "closed"]
    assert check_voice(ctx(pi5, config_file(tmp_path))).summary == "off (no [[voice.intents]])"


def test_an_unknown_user_or_root_is_a_usage_error(pi5, tmp_path, capsys):
    assert main(["doctor", "--user", "nosuchuser", "--only", "gpio"]) == 78
    captured = capsys.readouterr()
    assert "permissions checked" not in captured.out
    assert "--user nosuchuser: no such user on this system" in captured.err
    assert main(["doctor", "--root", str(tmp_path / "nonexistent")]) == 78
    assert f"--root {tmp_path / 'nonexistent'}: no such directory" in capsys.readouterr().err
    me = Identity.named(str(os.geteuid()))
    assert main(["doctor", "--user", me.name, "--root", str(pi5), "--only", "power"]) == 0
    assert f"permissions checked for user {me.name}" in capsys.readouterr().out


def _voice_ctx(pi5: Path, tmp_path: Path, intents: str, extra: str = "") -> Context:
    """A voice config over the fixture store's intents model, with a VAD that opens."""

    class FakeVad:
        def close(self):
            pass

    text = (f'[[models]]\nname = "intents"\npath = "{STORE}"\n[gpio]\nbackend = "mock"\n{extra}\n'
            f'[store]\ndir = "/var/lib/edgeslm/models"\n{intents}')
    return ctx(pi5, write(tmp_path / "voice.toml", text), open_vad=lambda path, threads: FakeVad())


def test_voice_checks_the_recogniser_and_the_intent_model_as_serve_does(pi5, tmp_path):
    from edgeslm.doctor.service import check_voice

    good = '[[voice.intents]]\nname = "lights_on"\nphrases = ["turn on the light"]\n'
    finding = check_voice(_voice_ctx(pi5, tmp_path, good))
    assert finding.status == "ok", finding
    assert finding.summary.endswith("'intents' resolves them by classify")

    unknown_word = '[[voice.intents]]\nname = "lights_on"\nphrases = ["turn on the frobnicator"]\n'
    finding = check_voice(_voice_ctx(pi5, tmp_path, unknown_word))
    assert finding.status == "fail" and "exits 78" in finding.explanation
    assert finding.summary == ("voice.intents[0].phrases[0] ('turn on the frobnicator'): the word 'frobnicator' is "
                               "not in the pronunciation dictionary; add it under [voice.speech.pronunciations]")

    not_a_label = '[[voice.intents]]\nname = "open_door"\nphrases = ["open the door"]\n'
    finding = check_voice(_voice_ctx(pi5, tmp_path, not_a_label))
    assert finding.status == "fail" and "exits 78" in finding.explanation
    assert finding.summary.startswith("voice.intents[0].name 'open_door' is not a label of model 'intents' "
                                      "(cancel_timer, fan_off")

    elsewhere = check_voice(_voice_ctx(pi5, tmp_path, good, extra='[voice]\nintent_model = "commands"\n'))
    assert elsewhere.status == "fail"
    assert elsewhere.summary == "voice.intent_model 'commands' is not a served model (served: intents)"

    similarity = check_voice(_voice_ctx(pi5, tmp_path, good, extra='[voice]\nintent_method = "similarity"\n'))
    assert similarity.status == "ok" and similarity.summary.endswith("by similarity")  # its card embeds too


def test_a_named_gpio_backend_is_opened_as_serve_opens_it(pi5, tmp_path):
    class FakeBackend:
        def describe(self):
            return {"backend": "lgpio", "chip": "gpiochip4"}

        def close(self):
            pass

    asked = []

    def only_lgpio(name):
        asked.append(name)
        if name != "lgpio":
            raise GpioUnavailableError(f"{name} is not here")
        return FakeBackend()

    lgpio = ctx(pi5, config_file(tmp_path, extra='[gpio]\nbackend = "lgpio"\n'), open_gpio=only_lgpio)
    assert check_gpio(lgpio).status == "ok" and asked == ["lgpio"]
    rpigpio = ctx(pi5, config_file(tmp_path, extra='[gpio]\nbackend = "rpigpio"\n'), open_gpio=only_lgpio,
                  modules=("lgpio", "RPi.GPIO"))
    finding = check_gpio(rpigpio)
    assert finding.status == "fail" and "exits 78" in finding.explanation
    assert "[gpio] backend = 'rpigpio' does not open: rpigpio: rpigpio is not here" in finding.summary
    no_library = check_gpio(ctx(pi5, config_file(tmp_path, extra='[gpio]\nbackend = "rpigpio"\n')))
    assert no_library.status == "fail" and "pip install RPi.GPIO" in no_library.fix

    pc = tmp_path / "pc"
    write(pc / "proc/meminfo", "MemAvailable:    3500000 kB\n")
    finding = check_gpio(ctx(pc, config_file(tmp_path, extra='[gpio]\nbackend = "lgpio"\n')))
    assert finding.status == "fail" and finding.summary == "[gpio] backend = 'lgpio', but there is no /dev/gpiochip*"
    mock = check_gpio(ctx(pc, config_file(tmp_path, extra='[gpio]\nbackend = "mock"\n')))
    assert mock.status == "ok" and "mock" in mock.summary


def test_the_intent_model_must_fit_the_method():
    from edgeslm.errors import ConfigError
    from edgeslm.voice.intents import check_intent_model

    check_intent_model("classify", "m", ["classify"], ["a", "b"], ["b"])
    check_intent_model("similarity", "m", ["embed"], [], ["anything"])
    with pytest.raises(ConfigError, match="voice.intent_model 'm' does not classify; choose a classifier"):
        check_intent_model("classify", "m", ["embed"], [], ["a"])
    with pytest.raises(ConfigError, match="voice.intent_model 'm' does not embed; choose an embedding model"):
        check_intent_model("similarity", "m", ["classify"], ["a"], ["a"])
    with pytest.raises(ConfigError, match=r"voice.intents\[1\].name 'c' is not a label of model 'm' \(a, b\)"):
        check_intent_model("classify", "m", ["classify"], ["b", "a"], ["a", "c"])
