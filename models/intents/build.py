"""Train the bundled `intents` model from phrases.toml and write every file of models/intents/.

Runs in a separate conversion venv, never the project's .venv (Python 3.11):

    python3 -m venv /work/venvs/convert
    /work/venvs/convert/bin/pip install tensorflow-cpu==2.21.0 onnx==1.23.2 \
        onnxruntime==1.32.0 onnx-ir tokenizers==0.23.3 numpy==2.4.6 ai-edge-litert==2.3.0
    /work/venvs/convert/bin/python models/intents/build.py [--out DIR] [--seed 0]

Steps: expand and augment the phrases, train a WordPiece tokenizer, train a small
convolutional classifier in TensorFlow, export it (ONNX int8, TFLite int8 with
dynamic shapes, TFLite int8 with fixed-shape buckets), check every file
(held-out accuracy, agreement, padding invariance, self-check) and write model.toml.
About 30 seconds on two CPU cores; the output is the same bit for bit from run to run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import export  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_SEQ_LEN = 32
VOCAB_SIZE = 1500
EMBED_DIM = 64
CHANNELS = 96
CONV_LAYERS = 1
PHRASES_PER_INTENT = 320  # hand-written + templated + augmented, per label
TEMPLATED_PER_INTENT = 60
EPOCHS = 14
BATCH_SIZE = 64
LEARNING_RATE = 4e-3
LABEL_SMOOTHING = 0.0
TOKEN_DROPOUT = 0.1
FEATURE_DROPOUT = 0.2
SELFCHECK_INPUT = [
    "turn on the kitchen light",
    "what time is it",
    "set a timer for ten minutes",
    "turn the volume down",
]
MIN_COSINE = 0.99


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- phrases --------------------------------------------------------------------------


@dataclass(frozen=True)
class PhraseSet:
    """Labels in output order, training texts with label indices, held-out texts, tokenizer extras."""

    labels: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    heldout_texts: list[str]
    heldout_labels: np.ndarray
    extra_text: list[str]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def expand_template(template: str, slots: dict[str, list[str]]) -> list[str]:
    names = re.findall(r"{(\w+)}", template)
    return [template.format(**dict(zip(names, values))) for values in itertools.product(*(slots[n] for n in names))]


def augment(text: str, kind: str, aug: dict[str, list[str]], rng: np.random.Generator) -> str:
    """One spoken-style variant: maybe a polite prefix, a filler word, a suffix (at least one).

    Speech-to-text often sets a comma after "hey" or "um" and a "?" after a question,
    so those are added some of the time too.
    """
    def comma(word: str) -> str:
        return word + "," if rng.random() < 0.4 else word

    words = text.split()
    ops = rng.random(3) < (0.5, 0.45, 0.35)
    if not ops.any():
        ops[rng.integers(3)] = True
    if ops[1]:
        words.insert(int(rng.integers(len(words) + 1)), comma(str(rng.choice(aug["fillers"]))))
    if ops[0]:
        words.insert(0, comma(str(rng.choice(aug[f"{kind}_prefixes"]))))
    if ops[2]:
        words.append(str(rng.choice(aug[f"{kind}_suffixes"])))
    if kind == "question" and rng.random() < 0.3:
        words[-1] += "?"
    return " ".join(words)


def load_phrases(path: Path, rng: np.random.Generator) -> PhraseSet:
    data = tomllib.loads(path.read_text())
    aug, slots, intents = data["augment"], data["slots"], data["intents"]
    labels = list(intents)
    train_texts, train_labels, heldout_texts, heldout_labels = [], [], [], []
    for index, spec in enumerate(intents.values()):
        templated = [t for template in spec.get("templates", []) for t in expand_template(template, slots)]
        picked = rng.permutation(len(templated))[:TEMPLATED_PER_INTENT]
        base = list(dict.fromkeys(spec["train"] + [templated[i] for i in sorted(picked)]))
        texts = dict.fromkeys(base)  # an ordered set: iteration order must not depend on hashing
        for _ in range(PHRASES_PER_INTENT * 20):
            if len(texts) >= PHRASES_PER_INTENT:
                break
            texts[augment(base[int(rng.integers(len(base)))], spec["kind"], aug, rng)] = None
        train_texts += list(texts)
        train_labels += [index] * len(texts)
        heldout_texts += spec["heldout"]
        heldout_labels += [index] * len(spec["heldout"])
    phrases = PhraseSet(
        labels, train_texts, np.array(train_labels), heldout_texts, np.array(heldout_labels),
        data["tokenizer"]["extra_text"],
    )
    check_heldout_is_unseen(phrases, {w for words in aug.values() for p in words for w in p.split()})
    return phrases


def check_heldout_is_unseen(phrases: PhraseSet, augment_words: set[str]) -> None:
    """No held-out phrase may be trained on, not even with only prefixes, fillers or suffixes changed."""
    def core(text: str) -> str:
        return " ".join(w for w in normalise(text).split() if w not in augment_words)

    seen_label: dict[str, int] = {}
    for text, label in zip(phrases.train_texts, phrases.train_labels):
        key = normalise(text)
        assert seen_label.setdefault(key, label) == label, f"training phrase {text!r} has two labels"
    train_norm = set(seen_label) | {normalise(t) for t in phrases.extra_text}
    train_cores = {core(t) for t in phrases.train_texts}
    heldout_norm = [normalise(t) for t in phrases.heldout_texts]
    assert len(set(heldout_norm)) == len(heldout_norm), "a held-out phrase is listed twice"
    trained = [t for t in phrases.heldout_texts if normalise(t) in train_norm or core(t) in train_cores]
    assert not trained, f"held-out phrases also trained on (maybe with other filler words): {trained}"


# --- tokenizer ------------------------------------------------------------------------


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """A WordPiece tokenizer trained on `texts`; [PAD] = 0, [UNK] = 1, no post-processor.

    The trainer numbers the "##x" continuation pieces in hash-map order and breaks
    ties between merges by those numbers, so two runs can learn different vocabularies
    (huggingface/tokenizers#1794). Handing it every "##x" up front, sorted, fixes
    the numbering; the tokenizer is then rebuilt from the learned vocabulary so that
    only [PAD] and [UNK] are special.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))}
    continuations = sorted({"##" + c for w in words for c in w[1:]})
    specials = ["[PAD]", "[UNK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials + continuations,
                                        show_progress=False)
    learner = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    learner.normalizer, learner.pre_tokenizer = normalizer, pre_tokenizer
    learner.train_from_iterator(texts, trainer)

    tokenizer = Tokenizer(models.WordPiece(learner.get_vocab(), unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(specials)
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.token_to_id("[UNK]") == 1
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Exactly the daemon's preprocessing: truncate to 32, pad with 0 to the longest row. int64 [n, seq]."""
    encodings = tokenizer.encode_batch(texts)
    seq = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), seq), np.int64)
    mask = np.zeros((len(texts), seq), np.int64)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.attention_mask)] = e.attention_mask
    return ids, mask


# --- model ----------------------------------------------------------------------------


class IntentNet(tf.Module):
    """Embedding -> CONV_LAYERS x (Conv1D(kernel 3) + ReLU, masked) (= hidden) -> masked mean | max -> Dense (= logits).

    Padding invariance: the [PAD] row starts at zero and never gets a gradient (its
    positions are masked before use), hidden is masked before pooling, and the
    masked max adds a large negative on padded positions.
    """

    def __init__(self, trained_pieces: np.ndarray, n_labels: int, seed: int):
        """`trained_pieces`: bool [vocab], True for word pieces that occur in the training phrases."""
        super().__init__(name="intents")
        def normal(shape, salt, std):
            return tf.random.stateless_normal(shape, seed=[seed, salt], stddev=std)

        embedding = normal([len(trained_pieces), EMBED_DIM], 1, 0.1).numpy()
        # A piece absent from training never gets a gradient: at zero it is neutral, not noise.
        # [PAD] is among them, since padding is masked out.
        embedding[~trained_pieces] = 0.0
        self.embedding = tf.Variable(embedding, name="embedding")
        self.conv_kernels, self.conv_biases, width = [], [], EMBED_DIM
        for layer in range(CONV_LAYERS):
            kernel = normal([3, width, CHANNELS], 10 + layer, (2 / (3 * width)) ** 0.5)
            self.conv_kernels.append(tf.Variable(kernel, name=f"conv{layer}_kernel"))
            self.conv_biases.append(tf.Variable(tf.zeros([CHANNELS]), name=f"conv{layer}_bias"))
            width = CHANNELS
        self.dense_kernel = tf.Variable(normal([2 * CHANNELS, n_labels], 3, (1 / (2 * CHANNELS)) ** 0.5),
                                        name="dense_kernel")
        self.dense_bias = tf.Variable(tf.zeros([n_labels]), name="dense_bias")

    def __call__(self, input_ids, attention_mask, dropout_seed=None):
        mask = tf.expand_dims(tf.cast(attention_mask, tf.float32), -1)
        x = tf.gather(self.embedding, input_ids) * mask
        if dropout_seed is not None:
            keep = tf.random.stateless_uniform(tf.shape(input_ids), seed=dropout_seed) >= TOKEN_DROPOUT
            x = x * tf.expand_dims(tf.cast(keep, tf.float32), -1)
        hidden = x
        for kernel, bias in zip(self.conv_kernels, self.conv_biases):
            # Masking after every layer keeps padded positions at zero, the same as SAME padding.
            hidden = tf.nn.relu(tf.nn.conv1d(hidden, kernel, stride=1, padding="SAME") + bias) * mask
        mean = tf.reduce_sum(hidden, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        # Relu makes every real activation >= 0, so clamping at 0 only matters for an empty row.
        highest = tf.maximum(tf.reduce_max(hidden + (mask - 1.0) * export.PAD_NEGATIVE, axis=1), 0.0)
        pooled = tf.concat([mean, highest], axis=1)
        if dropout_seed is not None:
            pooled = tf.nn.experimental.stateless_dropout(pooled, FEATURE_DROPOUT, seed=dropout_seed + [0, 1])
        logits = tf.matmul(pooled, self.dense_kernel) + self.dense_bias
        return {"logits": logits, "hidden": hidden}

    def weights(self) -> dict[str, np.ndarray]:
        return {v.name.split(":")[0]: v.numpy() for v in self.variables}

    def run(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self(tf.constant(ids), tf.constant(mask))
        return out["logits"].numpy(), out["hidden"].numpy()


def train(net: IntentNet, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """Adam with a cosine learning-rate decay (and optional label smoothing), written out to stay deterministic."""
    variables = net.trainable_variables
    moments = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]
    n_labels = net.dense_bias.shape[0]
    int_matrix = tf.TensorSpec([None, None], tf.int64)

    @tf.function(input_signature=[int_matrix, int_matrix, tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.float32)])
    def step(ids, mask, labels, t, lr):
        target = tf.one_hot(labels, n_labels) * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / n_labels
        with tf.GradientTape() as tape:
            logits = net(ids, mask, dropout_seed=tf.stack([tf.constant(seed, tf.int64), t]))["logits"]
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, logits))
        t1 = tf.cast(t, tf.float32) + 1.0
        for var, grad, (m, v) in zip(variables, tape.gradient(loss, variables), moments):
            grad = tf.convert_to_tensor(grad)
            m.assign(0.9 * m + 0.1 * grad)
            v.assign(0.999 * v + 0.001 * grad * grad)
            var.assign_sub(lr * (m / (1 - 0.9**t1)) / (tf.sqrt(v / (1 - 0.999**t1)) + 1e-8))
        return loss

    rng = np.random.default_rng(seed + 1)
    steps_per_epoch = -(-len(labels) // BATCH_SIZE)
    total, t = EPOCHS * steps_per_epoch, 0
    for epoch in range(EPOCHS):
        order, losses = rng.permutation(len(labels)), []
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            seq = int(mask[batch].sum(axis=1).max())
            lr = LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t / total)))
            loss = step(ids[batch, :seq], mask[batch, :seq], labels[batch], np.int64(t), np.float32(lr))
            losses.append(float(loss))
            t += 1
        log(f"  epoch {epoch + 1:2d}/{EPOCHS}  loss {np.mean(losses):.4f}")
    assert not net.embedding.numpy()[0].any(), "the [PAD] embedding must stay exactly zero"


# --- checks ---------------------------------------------------------------------------


def check_files(net: IntentNet, float_onnx_runner, runners: dict, tokenizer: Tokenizer, phrases: PhraseSet):
    """Assert the contract on every exported file.

    Returns (held-out accuracy per file, formats agree, self-check logits).
    """
    log("checking")
    heldout_ids, heldout_mask = encode(tokenizer, phrases.heldout_texts)
    fp32_logits = export.predict(net, heldout_ids, heldout_mask)
    onnx_fp32_gap = float(np.abs(export.predict(float_onnx_runner, heldout_ids, heldout_mask) - fp32_logits).max())
    assert onnx_fp32_gap < 1e-4, f"hand-built ONNX graph differs from TensorFlow by {onnx_fp32_gap}"
    log(f"fp32 ONNX graph matches TensorFlow within {onnx_fp32_gap:.2e}")

    accuracy = {"fp32": float((fp32_logits.argmax(1) == phrases.heldout_labels).mean())}
    ids, mask = encode(tokenizer, phrases.train_texts)
    train_accuracy = float((export.predict(net, ids, mask).argmax(1) == phrases.train_labels).mean())
    predictions = {}
    for name, runner in runners.items():
        predictions[name] = export.predict(runner, heldout_ids, heldout_mask).argmax(1)
        accuracy[name] = float((predictions[name] == phrases.heldout_labels).mean())
    for text, label, got in zip(phrases.heldout_texts, phrases.heldout_labels, fp32_logits.argmax(1)):
        if label != got:
            print(f"    fp32 miss: {text!r}: {phrases.labels[label]} -> {phrases.labels[got]}")
    log(f"train accuracy (fp32) {train_accuracy:.3f}; held-out accuracy "
        + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    disagree = np.flatnonzero(np.ptp(np.stack(list(predictions.values())), axis=0) > 0)
    for row in disagree:
        top2 = np.sort(fp32_logits[row])[-2:]
        print(f"    formats disagree on {phrases.heldout_texts[row]!r}: "
              + ", ".join(f"{k} {phrases.labels[p[row]]}" for k, p in predictions.items())
              + f" (fp32 top-2 logits {top2[1]:.3f} vs {top2[0]:.3f})")
    agree = len(disagree) == 0
    assert agree, "ONNX and TFLite files disagree on a held-out phrase"

    long_text = " ".join(["please turn on the light in the living room"] * 5)
    probe_ids, probe_mask = encode(tokenizer, SELFCHECK_INPUT + phrases.heldout_texts[::24] + [long_text])
    assert probe_mask[-1].sum() == MAX_SEQ_LEN
    invariance = {"fp32": export.padding_invariance(net, probe_ids, probe_mask, exact=True),
                  "fp32 onnx": export.padding_invariance(float_onnx_runner, probe_ids, probe_mask, exact=True)}
    for name, runner in runners.items():
        invariance[name] = export.padding_invariance(runner, probe_ids, probe_mask, exact=False)
    for name, result in invariance.items():
        log(f"padding invariance {name}: max |change| " + ", ".join(f"{k} {v:.1e}" for k, v in result.items()))

    check_ids, check_mask = encode(tokenizer, SELFCHECK_INPUT)
    expected = np.round(net.run(check_ids, check_mask)[0], 4)
    cosines = {name: export.selfcheck(runner, check_ids, check_mask, expected, MIN_COSINE)
               for name, runner in runners.items()}
    for name, values in cosines.items():
        log(f"self-check {name}: cosines " + ", ".join(f"{c:.5f}" for c in values))
    return accuracy, agree, expected


def blind_accuracy(runners: dict, tokenizer: Tokenizer, labels: list[str]) -> tuple[int, float]:
    """(phrases, accuracy) on blind.toml: written after training, never used to train or tune."""
    blind = tomllib.loads((HERE / "blind.toml").read_text())["intents"]
    texts = [t for phrases in blind.values() for t in phrases]
    truth = np.array([labels.index(label) for label, phrases in blind.items() for _ in phrases])
    ids, mask = encode(tokenizer, texts)
    scores = {name: float((export.predict(r, ids, mask).argmax(1) == truth).mean()) for name, r in runners.items()}
    assert len(set(scores.values())) == 1, f"formats differ on the blind set: {scores}"
    log(f"blind set: {len(texts)} phrases, accuracy {scores['model.onnx']:.3f} (every format)")
    return len(texts), scores["model.onnx"]


# --- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the built files")
    parser.add_argument("--seed", type=int, default=0, help="seed for data augmentation, init and dropout")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(args.seed)

    phrases = load_phrases(HERE / "phrases.toml", rng)
    log(f"{len(phrases.labels)} intents, {len(phrases.train_texts)} training phrases, "
        f"{len(phrases.heldout_texts)} held-out phrases")
    (args.out / "labels.txt").write_text("\n".join(phrases.labels) + "\n")

    tokenizer = train_tokenizer(list(dict.fromkeys(phrases.train_texts)) + phrases.extra_text)
    tokenizer.save(str(args.out / "tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LEN)
    log(f"tokenizer: {tokenizer.get_vocab_size()} word pieces")

    ids, mask = encode(tokenizer, phrases.train_texts)
    trained_pieces = np.bincount(ids[mask == 1], minlength=tokenizer.get_vocab_size()) > 0
    log(f"{trained_pieces.sum()} of them occur in the training phrases")
    net = IntentNet(trained_pieces, len(phrases.labels), args.seed)
    log("training")
    train(net, ids, mask, phrases.train_labels, args.seed)

    log("exporting")
    with tempfile.TemporaryDirectory() as scratch:
        float_onnx = Path(scratch) / "model_fp32.onnx"
        export.write_onnx(net.weights(), args.out / "model.onnx", float_onnx)
        export.write_tflite(net, args.out / "model.tflite", buckets=False)
        export.write_tflite(net, args.out / "model_buckets.tflite", buckets=True)
        float_onnx_runner = export.OnnxRunner(float_onnx)
        runners = {
            "model.onnx": export.OnnxRunner(args.out / "model.onnx"),
            "model.tflite": export.TfliteRunner(args.out / "model.tflite"),
            "model_buckets.tflite": export.BucketRunner(args.out / "model_buckets.tflite"),
        }
        accuracy, agree, expected = check_files(net, float_onnx_runner, runners, tokenizer, phrases)

        blind = blind_accuracy(runners, tokenizer, phrases.labels)

    tflite_inputs = runners["model.tflite"].inputs
    log("tflite serving_default inputs: " + ", ".join(
        f"{k} {np.dtype(d['dtype']).name} {runners['model.tflite'].shape_signature[k]}"
        for k, d in tflite_inputs.items()))
    buckets = runners["model_buckets.tflite"]
    log(f"tflite buckets: {len(buckets.signatures)} signatures ({', '.join(buckets.signatures)}), inputs "
        + ", ".join(f"{k} {np.dtype(t).name}" for k, t in buckets.dtypes["b1_s16"].items()))
    for name in runners:
        size = (args.out / name).stat().st_size
        assert size < 5 * 1024 * 1024, f"{name} is {size} bytes, over 5 MB"
    export.write_card(
        args.out,
        n_labels=len(phrases.labels),
        max_seq_len=MAX_SEQ_LEN,
        accuracy=accuracy,
        n_heldout=len(phrases.heldout_texts),
        n_train=len(phrases.train_texts),
        formats_agree=agree,
        selfcheck_input=SELFCHECK_INPUT,
        expected=expected,
        min_cosine=MIN_COSINE,
        tflite_input_dtype=np.dtype(tflite_inputs["input_ids"]["dtype"]).name,
        blind=blind,
    )
    for name in ["labels.txt", "tokenizer.json", *runners, "model.toml"]:
        log(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
