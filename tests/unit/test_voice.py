"""Voice pipeline parts with fakes: endpointing, the capture ring, arecord faults, WAV checks, busy presses."""

from __future__ import annotations

import io
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from edgeslm.config import GpioConfig, IntentConfig, SpeechConfig, VadConfig
from edgeslm.errors import AudioFormatError, ConfigError, MicrophoneError
from edgeslm.events import EventBus
from edgeslm.hw.audio import ArecordSource, ArraySource, RingBuffer
from edgeslm.hw.clock import ManualScheduler
from edgeslm.hw.gpio.board import GpioBoard, StatusLeds
from edgeslm.hw.gpio.mock import MockBackend
from edgeslm.voice.intents import IntentGuess
from edgeslm.voice.pipeline import FRAME_S, VoicePipeline, VoiceResult
from edgeslm.voice.service import VoiceService
from edgeslm.voice.speech import Heard, PhraseRecognizer, grammar_for, normalise
from edgeslm.voice.utterance import UtteranceRules, UtteranceTracker
from edgeslm.voice.wav import read_wav, wav_from_multipart

RULES = UtteranceRules.from_config(VadConfig(min_silence_ms=320, min_speech_ms=64, speech_pad_ms=64,
                                             no_speech_timeout_s=1.0), max_seconds=3.0, frame_s=FRAME_S)


def track(probabilities):
    tracker = UtteranceTracker(RULES)
    for p in probabilities:
        verdict = tracker.push(p)
        if verdict:
            return verdict, tracker
    return None, tracker


def test_utterance_ends_after_trailing_silence_and_ignores_blips():
    verdict, tracker = track([0.1] * 5 + [0.9] + [0.1] * 3 + [0.9] * 20 + [0.4] * 2 + [0.1] * 20)
    assert verdict == "speech_ended"
    assert (tracker.start, tracker.end) == (9, 31)  # the one-frame blip at 5 did not start speech; 0.4 holds


def test_utterance_is_cut_at_max_length_and_gives_up_without_speech():
    verdict, tracker = track([0.9] * 200)
    assert verdict == "max_length" and tracker.end == RULES.max_frames
    verdict, tracker = track([0.1] * 200)
    assert verdict == "no_speech" and tracker.frames == RULES.no_speech_frames


def test_ring_buffer_wraps_and_holds_the_writer_back_when_full():
    ring = RingBuffer(8)
    ring.write(np.arange(6, dtype=np.int16))
    assert ring.read(4, 1).tolist() == [0, 1, 2, 3]
    ring.write(np.arange(6, 12, dtype=np.int16))  # wraps around the end
    assert ring.read(8, 1).tolist() == list(range(4, 12))
    writer = threading.Thread(target=ring.write, args=(np.arange(20, dtype=np.int16),))
    writer.start()
    got = np.concatenate([ring.read(5, 5) for _ in range(4)])
    writer.join(5)
    assert got.tolist() == list(range(20)) and ring.waits > 0  # nothing dropped
    with pytest.raises(TimeoutError):
        ring.read(1, 0.01)
    ring.close()
    assert ring.read(1, 1) is None


def fake_arecord(tmp_path: Path, body: str) -> str:
    script = tmp_path / "arecord"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_arecord_source_streams_what_the_device_gives(tmp_path):
    samples = (np.arange(3 * 512) % 300).astype("<i2")
    (tmp_path / "audio.raw").write_bytes(samples.tobytes())
    source = ArecordSource("hw:1,0", 16000, arecord=fake_arecord(tmp_path, f'cat "{tmp_path}/audio.raw"'))
    source.start()
    frames = [source.read(512, 5) for _ in range(4)]
    source.stop()
    assert np.concatenate(frames[:3]).tolist() == samples.tolist() and frames[3] is None
    assert source.first_audio_at is not None


@pytest.mark.parametrize("stderr, code", [
    ("arecord: main:834: audio open error: Device or resource busy", "mic_busy"),
    ("ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM hw:9,0", "mic_unavailable"),
])
def test_arecord_faults_become_clear_microphone_errors(tmp_path, stderr, code):
    source = ArecordSource("hw:9,0", 16000, arecord=fake_arecord(tmp_path, f'echo "{stderr}" >&2; exit 1'))
    source.start()
    with pytest.raises(MicrophoneError) as info:
        source.read(512, 5)
    source.stop()
    assert info.value.code == code and "voice.device" in info.value.message


def test_missing_arecord_and_a_silent_device(tmp_path):
    with pytest.raises(MicrophoneError, match="apt install alsa-utils"):
        ArecordSource("default", 16000, arecord=str(tmp_path / "nope")).start()
    source = ArecordSource("default", 16000, arecord=fake_arecord(tmp_path, "exec sleep 30"))
    source.start()
    with pytest.raises(MicrophoneError, match="no audio from 'default'"):
        source.read(512, 0.2)
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 5


def wav_bytes(samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(channels)
        clip.setsampwidth(width)
        clip.setframerate(rate)
        clip.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_read_wav_takes_16k_mono_16bit_and_says_how_to_convert_the_rest():
    tone = (np.sin(np.arange(8000) / 5) * 3000).astype("<i2")
    assert read_wav(wav_bytes(tone), sample_rate=16000, max_seconds=8).tolist() == tone.tolist()
    for data, message in [
        (b"ID3\x03 an mp3 file", "not a WAV file"),
        (wav_bytes(tone, rate=44100), "44100 Hz (needs 16000)"),
        (wav_bytes(np.repeat(tone, 2), channels=2), "2 channels (needs mono)"),
        (wav_bytes(tone.astype(np.uint8), width=1), "8-bit samples (needs 16-bit)"),
        (wav_bytes(np.zeros(16000 * 9, dtype="<i2")), "the clip is 9.0 s; the limit is voice.max_seconds = 8"),
    ]:
        with pytest.raises(AudioFormatError) as info:
            read_wav(data, sample_rate=16000, max_seconds=8)
        assert message in info.value.message and ("sox" in info.value.message or "limit" in info.value.message)



def test_a_wav_whose_chunk_size_lies_is_a_format_error():
    good = bytearray(wav_bytes((np.arange(1600) % 100).astype("<i2")))
    good[16:20] = (0xFFFFFFF0).to_bytes(4, "little")  # the fmt chunk claims 4 GB: wave raises a bare RuntimeError
    with pytest.raises(AudioFormatError) as info:
        read_wav(bytes(good), sample_rate=16000, max_seconds=8)
    assert "cannot read the WAV" in info.value.message and "sox" in info.value.message


def test_multipart_upload_yields_the_file_part_byte_for_byte():
    payload = wav_bytes((np.arange(1600) * 37 % 65536 - 32768).astype("<i2"))  # every byte value appears
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    assert wav_from_multipart(body, f"multipart/form-data; boundary={boundary}") == payload
    with pytest.raises(AudioFormatError, match="no file field"):
        wav_from_multipart(f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--{boundary}--\r\n"
                           .encode(), f"multipart/form-data; boundary={boundary}")


def test_recogniser_grammar_holds_exactly_the_phrases_and_refuses_unknown_words():
    assert normalise("  Turn ON the light!! ") == "turn on the light"
    assert grammar_for(["b c", "a"]).endswith("public <command> = ( a ) | ( b c );\n")
    intents = [IntentConfig(name="x", phrases=["Hello, edgeslm"])]
    with pytest.raises(ConfigError, match=r"voice.intents\[0\].phrases\[0\] \('Hello, edgeslm'\): the word "
                                          "'edgeslm' is not in the pronunciation dictionary"):
        PhraseRecognizer(intents, SpeechConfig())
    recognizer = PhraseRecognizer(intents, SpeechConfig(pronunciations={"edgeslm": "EH JH S L AE M"}))
    assert recognizer.phrases == {"hello edgeslm"}
    heard = recognizer.transcribe(np.zeros(8000, dtype=np.int16))
    assert not heard.complete  # silence is not a command


class EnergyVad:
    """Fake VAD: loud frames are speech."""

    def reset(self) -> None:
        pass

    def probability(self, frame: np.ndarray) -> float:
        return 0.95 if np.abs(frame).max() > 1000 else 0.02


class ScriptedRecognizer:
    def __init__(self, heard: Heard):
        self.heard, self.fed = heard, 0

    def transcribe(self, samples: np.ndarray) -> Heard:
        self.fed = len(samples)
        return self.heard


class FixedIntent:
    def __init__(self, guess: IntentGuess):
        self.guess = guess

    def resolve(self, text: str) -> IntentGuess:
        return self.guess


class RecordingRunner:
    def __init__(self) -> None:
        self.ran = []

    def run_all(self, actions, context):
        self.ran.append((actions, context))
        return [{"type": "event", "ok": True}]


def speech_clip() -> np.ndarray:
    quiet, loud = np.zeros(512 * 10, np.int16), np.full(512 * 20, 5000, np.int16)
    return np.concatenate([quiet, loud, np.zeros(512 * 30, np.int16)])


@pytest.mark.parametrize("heard, guess, status, reason", [
    (Heard("lights on", True, -2.0), IntentGuess("lights_on", 0.97), "intent", None),
    (Heard("lights", False, -2.0), IntentGuess("lights_on", 0.97), "no_match", "not_a_phrase"),
    (Heard("lights on", True, -7.0), IntentGuess("lights_on", 0.97), "no_match", "low_score"),
    (Heard("lights on", True, -2.0), IntentGuess("lights_on", 0.3), "no_match", "low_confidence"),
    (Heard("lights on", True, -2.0, words_ms=600), IntentGuess("lights_on", 0.97), "intent", None),
    (Heard("lights on", True, -2.0, words_ms=200), IntentGuess("lights_on", 0.97), "no_match", "extra_speech"),
])
def test_pipeline_acts_only_on_a_confident_whole_phrase(heard, guess, status, reason):
    runner = RecordingRunner()
    recognizer = ScriptedRecognizer(heard)
    pipeline = VoicePipeline(EnergyVad(), recognizer, FixedIntent(guess),
                             [IntentConfig(name="lights_on", phrases=["lights on"])], runner, RULES,
                             min_frame_score=-5.0, min_confidence=0.5, min_word_coverage=0.7)
    result = pipeline.run_on_audio(speech_clip(), context={"source": "upload"})
    assert (result.status, result.reason) == (status, reason)
    assert bool(runner.ran) == (status == "intent")
    assert result.ended_by == "speech_ended" and result.speech_audio_ms == pytest.approx(20 * FRAME_S * 1000)
    # the speech with speech_pad_ms of audio each side reached the recogniser, not the trailing silence
    assert recognizer.fed == (20 + 2 * RULES.pad_frames) * 512
    assert {"vad", "speech", "after_speech", "total"} <= set(result.latency_ms)


def test_pipeline_reports_no_speech_without_running_the_recogniser():
    recognizer = ScriptedRecognizer(Heard("x", True, 0.0))
    pipeline = VoicePipeline(EnergyVad(), recognizer, FixedIntent(IntentGuess("x", 1.0)), [], RecordingRunner(),
                             RULES, min_frame_score=-5.0, min_confidence=0.5)
    result = pipeline.run_on_audio(np.zeros(16000, np.int16), context={})
    assert (result.status, result.reason, recognizer.fed) == ("no_match", "no_speech", 0)


class GatedPipeline:
    """Fake pipeline: each capture waits for `gate` (or its stop event), so a test decides when it is busy."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.captures = []

    def listen(self, source, *, pressed_at, stop, context):
        source.start()
        self.captures.append(context["pin"])
        while not (self.gate.is_set() or stop.is_set()):
            time.sleep(0.005)
        return VoiceResult(status="no_match", reason="released" if stop.is_set() else "no_speech")


class ListRecorder:
    """Fake metrics recorder: keeps what `record` was given."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def clock(self) -> float:
        return 100.0

    def record(self, model, task, status, *, started_at, ended_at, extra=None) -> None:
        self.records.append((model, task, status, round(ended_at - started_at, 3), extra))


def service_rig(policy: str, source_error: MicrophoneError | None = None, recorder: ListRecorder | None = None):
    clock = ManualScheduler()
    config = GpioConfig.model_validate({"outputs": [{"pin": 23}, {"pin": 24}], "busy_led_pin": 23,
                                        "error_led_pin": 24, "error_led_s": 0})
    board = GpioBoard(MockBackend(), config, scheduler=clock, clock=clock, on_event=lambda e: None)
    leds = StatusLeds(board, 23, 24, 0, clock)
    bus = EventBus()
    events = bus.subscribe()
    pipeline = GatedPipeline()
    service = VoiceService(pipeline, lambda: ArraySource(np.zeros(10), error=source_error), bus, leds,
                           busy_policy=policy, max_queued=1, recorder=recorder)
    return service, pipeline, events, board


def wait_for(events, kind, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = events.get(timeout_s=0.1)
        if event is not None and event.kind == kind:
            return event
    raise AssertionError(f"no {kind} event")


def test_a_press_while_busy_is_ignored_never_crashes():
    service, pipeline, events, board = service_rig("ignore")
    assert service.press(trigger="talk", pin=17) == "started"
    wait_for(events, "listening")
    assert board.is_on(23)  # busy LED
    assert service.press(trigger="talk", pin=17) == "ignored"
    busy = wait_for(events, "busy")
    assert busy.data["outcome"] == "ignored" and busy.data["policy"] == "ignore"
    pipeline.gate.set()
    wait_for(events, "no_match")
    assert pipeline.captures == [17] and not board.is_on(23)
    assert service.press(trigger="talk", pin=17) == "started"  # free again once the result is out
    service.close()


def test_a_press_while_busy_is_queued_up_to_the_limit():
    service, pipeline, events, board = service_rig("queue")
    assert service.press(trigger="a", pin=1) == "started"
    wait_for(events, "listening")
    assert service.press(trigger="b", pin=2) == "queued"
    assert service.press(trigger="c", pin=3) == "ignored"  # max_queued = 1
    assert service.press(trigger="d", pin=4, mode="push_to_talk") == "ignored"
    pipeline.gate.set()
    wait_for(events, "no_match")
    wait_for(events, "no_match")
    assert pipeline.captures == [1, 2]
    service.close()


def test_push_to_talk_release_ends_the_capture():
    service, pipeline, events, board = service_rig("ignore")
    service.press(trigger="talk", pin=17, mode="push_to_talk")
    wait_for(events, "listening")
    service.release(16)  # another button: nothing happens
    service.release(17)
    assert wait_for(events, "no_match").data["reason"] == "released"
    service.close()


def test_no_microphone_is_an_error_event_and_the_error_led_until_a_success():
    error = MicrophoneError("cannot capture from 'hw:9,0': no such card", code="mic_unavailable")
    recorder = ListRecorder()
    service, pipeline, events, board = service_rig("ignore", source_error=error, recorder=recorder)
    service.press(trigger="talk", pin=17)
    event = wait_for(events, "error")
    assert event.data["code"] == "mic_unavailable" and event.data["source"] == "microphone"
    assert board.is_on(24) and not board.is_on(23)
    assert service.press(trigger="talk", pin=17) == "started"  # still alive
    wait_for(events, "error")
    service.publish_result(VoiceResult(status="intent", intent="x", latency_ms={"speech": 40.0, "total": 90.0}),
                           {"source": "upload"})
    assert not board.is_on(24)  # error_led_s = 0: off at the next success
    service.close()
    # each command is a request record: errors under their code, results with their stages
    assert [r[:3] for r in recorder.records] == [("voice", "voice", "mic_unavailable")] * 2 + [("voice", "voice", "ok")]
    assert recorder.records[-1][3:] == (0.09, {"source": "upload", "result": "intent", "reason": None, "intent": "x",
                                               "stages_ms": {"speech": 40.0}})
