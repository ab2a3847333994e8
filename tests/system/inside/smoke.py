"""The foundation's smoke test on whatever machine runs it: load the bundled ONNX and TFLite models
(sha256 and self-check at load) and classify one phrase through each model's batcher. Prints JSON."""

from __future__ import annotations

import json
import platform

from edgeslm.config import ModelConfig, bundled_model_dir
from edgeslm.tasks.served import ServedModel

PHRASE = "turn on the kitchen light"


def main() -> None:
    folder = bundled_model_dir("intents")
    results = {"machine": platform.machine(), "python": platform.python_version(), "models": {}}
    for name, path in (("onnx", folder / "model.onnx"), ("tflite", folder / "model.tflite")):
        model = ServedModel.load(ModelConfig(name=name, path=path))
        try:
            assert model.classify is not None
            encoded = model.classify.prepare([PHRASE], truncate=True)
            top = model.classify.answer(encoded, model.infer(encoded.feeds), 3)[0]
            results["models"][name] = {"label": top["label"], "score": round(float(top["score"]), 4),
                                       "runtime": model.engine.describe().get("runtime_version", name),
                                       "selfcheck": model.selfcheck}
        finally:
            model.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
