"""Voice commands: recognition accuracy over espeak-ng voices and speeds, and press-to-action latency by stage.

Run: make bench-voice   (or: .venv/bin/python bench/voice.py --voices en-us en-gb --speeds 140 175)

Daemon = `edgeslm serve` with the mock GPIO backend: each command is spoken by espeak-ng,
made 16 kHz mono by sox, given a -60 dBFS noise floor and replayed as the capture device
through the ALSA file plugin; a simulated press on the trigger pin starts arecord; the
result is read from GET /v1/events. Bare = the same VAD + recogniser + intent stages in
this process on the same samples (no daemon, arecord, GPIO or HTTP): the baseline the
daemon's processing time is compared with. The file plugin delivers audio as fast as it
is read, so capture here is faster than real time; on a live microphone add the spoken
length and voice.vad.min_silence_ms (the trailing silence that ends the utterance).
The machine is shared: numbers are provisional.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from edgeslm.config import IntentConfig, ModelConfig, VadConfig, VoiceConfig, bundled_model_dir  # noqa: E402
from edgeslm.tasks.served import ModelRegistry  # noqa: E402
from edgeslm.tasks.vad import SileroVad  # noqa: E402
from edgeslm.voice.intents import ClassifierIntents  # noqa: E402
from edgeslm.voice.pipeline import FRAME_S, VoicePipeline  # noqa: E402
from edgeslm.voice.speech import PhraseRecognizer  # noqa: E402
from edgeslm.voice.utterance import UtteranceRules  # noqa: E402
from tests.integration.conftest import Daemon  # noqa: E402
from tests.voice_assets import (  # noqa: E402
    INTENTS,
    TRIGGER_PIN,
    EventReader,
    as_heard,
    asoundrc,
    missing_tools,
    silero_vad_onnx,
    speak,
    voice_daemon_config,
)

STAGES = ("capture_start", "first_audio", "capture", "vad", "speech", "intent", "action",
          "after_speech", "total")


OUT_OF_GRAMMAR = ["what is the weather like in london", "good morning how are you", "banana republic",
                  "open the garage door", "call my mother"]


def press(client, reader) -> tuple[str, dict]:
    client.post(f"/v1/gpio/{TRIGGER_PIN}/press", json={"hold_ms": 50})
    return reader.until({"intent", "no_match", "error"})[-1]


class NoActions:
    def run_all(self, actions, context):
        return []


def bare_pipeline(vad_path: Path) -> tuple[VoicePipeline, ModelRegistry]:
    intents = [IntentConfig(name=n, phrases=p) for n, p, *_ in INTENTS]
    voice = VoiceConfig(intents=intents, vad=VadConfig(model_path=vad_path))
    registry = ModelRegistry.load([ModelConfig(name="intents", path=bundled_model_dir())])
    pipeline = VoicePipeline(SileroVad.open(vad_path), PhraseRecognizer(intents, voice.speech),
                             ClassifierIntents(registry, "intents", intents), intents, NoActions(),
                             UtteranceRules.from_config(voice.vad, voice.max_seconds, FRAME_S),
                             min_frame_score=voice.speech.min_frame_score, min_confidence=voice.min_confidence,
                             min_word_coverage=voice.speech.min_word_coverage)
    return pipeline, registry


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", nargs="+", default=["en-us", "en-gb"])
    parser.add_argument("--speeds", nargs="+", type=int, default=[140, 175])
    parser.add_argument("--all-phrases", action="store_true", help="speak every configured phrase, not the first")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        print(f"skipped: needs {', '.join(missing)} (apt install espeak-ng sox alsa-utils)")
        return 0
    vad_path = silero_vad_onnx()
    work = Path(tempfile.mkdtemp(prefix="edgeslm-voice-bench-"))
    (work / ".asoundrc").write_text(asoundrc(work / "utterance.raw"))
    pipeline, registry = bare_pipeline(vad_path)
    daemon = Daemon(work, voice_daemon_config(vad_path), env={"HOME": str(work)}).start()
    reader = EventReader(daemon.socket)
    client = daemon.client()
    rows, latencies, bare_ms, misses = [], {s: [] for s in STAGES}, [], []
    audio_ms: dict[str, list[float]] = {"daemon": [], "bare": []}
    false_accepts, oog_total = [], 0
    try:
        for voice in args.voices:
            for speed in args.speeds:
                right = total = 0
                for name, phrases, *_ in INTENTS:
                    for phrase in (phrases if args.all_phrases else phrases[:1]):
                        samples = as_heard(speak(phrase, voice=voice, speed=speed, workdir=work))
                        samples.tofile(work / "utterance.raw")
                        t0 = time.perf_counter()
                        bare = pipeline.run_on_audio(samples, context={}, act=False)
                        bare_ms.append((time.perf_counter() - t0) * 1000)
                        audio_ms["bare"].append(bare.audio_ms)
                        kind, result = press(client, reader)
                        audio_ms["daemon"].append(result.get("audio_ms", float("nan")))
                        total += 1
                        if kind == "intent" and result["intent"] == name:
                            right += 1
                            for stage in STAGES:
                                if stage in result.get("latency_ms", {}):
                                    latencies[stage].append(result["latency_ms"][stage])
                        else:
                            misses.append((voice, speed, phrase, kind, result.get("intent"),
                                           result.get("transcript"), result.get("reason"),
                                           bare.intent if bare.status == "intent" else bare.reason))
                rows.append((voice, speed, right, total))
                for text in OUT_OF_GRAMMAR:
                    as_heard(speak(text, voice=voice, speed=speed, workdir=work)).tofile(work / "utterance.raw")
                    kind, result = press(client, reader)
                    oog_total += 1
                    if kind == "intent":
                        false_accepts.append((voice, speed, text, result["intent"], result.get("frame_score")))
    finally:
        reader.close()
        daemon.stop()
        registry.close()
    print(f"\nrecognition through the daemon (press -> arecord -> VAD -> pocketsphinx -> intents model), "
          f"{'all phrases' if args.all_phrases else 'first phrase of each of'} {len(INTENTS)} intents")
    right = sum(r[2] for r in rows)
    total = sum(r[3] for r in rows)
    for voice, speed, ok, n in rows:
        print(f"  {voice:<10} {speed:>3} wpm  {ok:>3}/{n:<3} {ok / n:6.1%}")
    print(f"  {'all':<18} {right:>3}/{total:<3} {right / total:6.1%}")
    for miss in misses:
        print("  miss:", miss)
    print(f"\nspeech that is no command ({len(OUT_OF_GRAMMAR)} sentences per voice and speed): "
          f"{len(false_accepts)}/{oog_total} taken as a command (the rest no_match)")
    for accept in false_accepts:
        print("  taken as a command:", accept)
    print("\npress-to-action latency by stage over the recognised commands, ms (median / p90):")
    for stage in STAGES:
        values = latencies[stage]
        print(f"  {stage:<14} {pct(values, 50):8.1f} {pct(values, 90):8.1f}")
    print(f"  audio examined per command: daemon {pct(audio_ms['daemon'], 50):.0f} ms, "
          f"bare {pct(audio_ms['bare'], 50):.0f} ms (median)")
    bare_median = pct(bare_ms, 50)
    print(f"\nbare in-process VAD + recogniser + intent on the same samples: median {bare_median:.1f} ms")
    print(f"daemon press-to-action total / bare: {pct(latencies['total'], 50) / bare_median:.2f}x")
    print("capture here is replayed faster than real time; on a live microphone add the spoken length and "
          "voice.vad.min_silence_ms. Shared machine: provisional numbers.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
