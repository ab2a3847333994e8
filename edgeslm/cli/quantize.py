"""`edgeslm quantize IN OUT --int8|--int4`: weight-only quantization of a user's ONNX model, with its agreement."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslm.errors import ConfigError, QuantizeError


def _onnx_size(path: Path) -> int:
    """The .onnx file plus any external-data files next to it that it names."""
    import onnx

    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return total + sum((path.parent / n).stat().st_size for n in names if (path.parent / n).is_file())


@dataclass(frozen=True)
class Quantized:
    """What quantization changed: MatMuls before, MatMulNBits after, embedding tables quantized and left float."""

    matmuls: int
    matmulnbits: int
    tables: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # "name: why; left fp32", one per float table --embeddings left alone


def quantize_model(src: Path, dst: Path, bits: int, *, block_size: int = 32, accuracy_level: int = 4,
                   embeddings: bool = False) -> tuple[Any, Quantized]:
    """The weight-only quantized `src`, in memory (nothing is written), and what changed; checks IN and OUT first."""
    import onnx

    from edgeslm.convert.quantize import (
        EmbeddingTables,
        embedding_tables,
        quantize_gathers_int4,
        quantize_gathers_int8,
        quantize_matmuls,
    )

    if not src.is_file():
        raise QuantizeError(f"{src} does not exist or is not a file; give an .onnx file")
    if dst.is_dir():
        raise QuantizeError(f"OUT {dst} is a folder; give a file name, e.g. {dst / src.name}")
    if dst.resolve() == src.resolve():
        raise QuantizeError("OUT must differ from IN; the original is needed to measure agreement")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError, OSError and others for unreadable or non-ONNX files
        raise QuantizeError(f"cannot read {src} as ONNX: {exc}") from None
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    model = quantize_matmuls(model, bits, block_size=block_size, accuracy_level=accuracy_level)
    after = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    tables = embedding_tables(model) if embeddings else EmbeddingTables((), ())
    if tables.chosen:
        if bits == 8:
            quantize_gathers_int8(model)
        else:
            model = quantize_gathers_int4(model, block_size=max(block_size, 16))
    result = Quantized(before, after, tables.chosen, tables.skipped)
    if after == 0 and not result.tables:
        why = f" ({'; '.join(result.skipped)})" if result.skipped else ""
        raise QuantizeError(f"{src.name} has no MatMul with a constant weight (of {before} MatMuls) and no "
                            f"embedding table to quantize{why}; nothing would change")
    return model, result


@contextlib.contextmanager
def staged(dst: Path) -> Iterator[Path]:
    """A path in a new folder beside `dst`; what is written there moves into `dst`'s folder only if the block
    ends without an error, so a failed or interrupted run leaves no partial OUT (nor OUT.data) behind."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    except OSError as exc:
        raise QuantizeError(f"cannot write into {dst.parent}: {exc.strerror}; choose an OUT in a folder you "
                            "can write to") from None
    try:
        yield work / dst.name
        for path in sorted(work.iterdir(), key=lambda p: p.name == dst.name):  # the model last: it names its data
            path.replace(dst.parent / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_model(model: Any, path: Path) -> None:
    """Write `model` to `path`, with its weights in `path.data` beside it when protobuf's 2 GB limit needs that."""
    import onnx

    large = model.ByteSize() > (1 << 31) - (1 << 20)
    try:
        onnx.save(model, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)
    except OSError as exc:
        raise QuantizeError(f"cannot write {path.name}: {exc.strerror}") from None


def quantize_file(src: Path, dst: Path, bits: int, *, block_size: int = 32, accuracy_level: int = 4,
                  embeddings: bool = False) -> Quantized:
    """Write `dst`, the weight-only quantized `src` (all at once, or not at all); returns what changed."""
    model, result = quantize_model(src, dst, bits, block_size=block_size, accuracy_level=accuracy_level,
                                   embeddings=embeddings)
    with staged(dst) as path:
        save_model(model, path)
    return result


def run_feeds(path: Path, feeds: list[dict[str, Any]], threads: int, label: str = "") -> dict[str, Any]:
    """Every output of the model at `path` on every feed, stacked (padded) per output."""
    from edgeslm.core.tensors import pad_stack
    from edgeslm.runtime import EngineOptions, open_engine

    engine = open_engine(path, "onnx", EngineOptions(threads=threads))
    try:
        runs = []
        for i, feed in enumerate(feeds):
            try:
                runs.append(engine.run(feed))
            except Exception as exc:
                raise QuantizeError(f"reference feed {i} does not fit {label or path.name}: {exc}") from None
    finally:
        engine.close()
    return {name: pad_stack([r[name] for r in runs]) for name in runs[0]}


def agreement(src: Path, dst: Path, reference: Path, threads: int) -> list:
    """How closely `dst`'s outputs follow `src`'s on the feeds in `reference`."""
    from edgeslm.convert.quantize import compare_outputs, load_feeds

    feeds = load_feeds(reference)
    return compare_outputs(run_feeds(src, feeds, threads), run_feeds(dst, feeds, threads))


def check_gate(args: argparse.Namespace) -> None:
    """--min-cosine is a cosine similarity threshold, and only means something with feeds to measure on."""
    if args.min_cosine is None:
        return
    if not 0 < args.min_cosine <= 1:
        raise ConfigError(f"--min-cosine {args.min_cosine}: give a cosine similarity threshold in (0, 1] (1 = the "
                          "outputs point the same way, 0.99 is typical); at 0 or below, outputs unrelated to the "
                          "original's would pass")
    if args.reference is None:
        raise ConfigError("--min-cosine needs --reference FEEDS.npz: the cosine is measured on those inputs "
                          "(numpy.savez of the model's inputs)")


def _summary(args: argparse.Namespace, bits: int, result: Quantized) -> list[str]:
    tables = f", {len(result.tables)} embedding table(s)" if args.embeddings else ""
    lines = [f"{args.input} -> {args.output}: int{bits} weight-only, {result.matmulnbits} of {result.matmuls} "
             f"MatMuls as MatMulNBits (block {args.block_size}, accuracy_level {args.accuracy_level}){tables}"]
    if args.embeddings and not result.tables and not result.skipped:
        lines.append("  --embeddings: no constant float table read by a Gather in this model")
    lines += [f"  --embeddings skipped {why}" for why in result.skipped]
    return lines


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgeslm.convert.quantize import compare_outputs, load_feeds

    bits = 8 if args.int8 else 4
    check_gate(args)
    # Every input is read and checked before anything is written.
    feeds = load_feeds(args.reference) if args.reference is not None else None
    model, result = quantize_model(args.input, args.output, bits, block_size=args.block_size,
                                   accuracy_level=args.accuracy_level, embeddings=args.embeddings)
    original = run_feeds(args.input, feeds, args.threads) if feeds else None
    with staged(args.output) as path:
        save_model(model, path)
        for line in _summary(args, bits, result):
            print(line)
        before, after = _onnx_size(args.input), _onnx_size(path)
        print(f"size: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / before:.1%} of the original)")
        if original is None:
            print("agreement: not measured; pass --reference FEEDS.npz (numpy.savez of the model's inputs)")
            return 0
        worst = 1.0
        for item in compare_outputs(original, run_feeds(path, feeds, args.threads, label=args.output.name)):
            print(f"agreement on {args.reference.name}: {item.describe()}")
            worst = min(worst, item.min_cosine)
        if args.min_cosine is not None and worst < args.min_cosine:
            raise QuantizeError(f"FAILED: min cosine {worst:.4f} < --min-cosine {args.min_cosine}, so {args.output} "
                                "was not written; lower --min-cosine, try --int8 or a smaller --block-size, or drop "
                                "--min-cosine to keep it anyway")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    parser = sub.add_parser(
        "quantize", help="quantize an ONNX model's weights to int8 or int4 and measure the agreement",
        formatter_class=FORMATTER,
        description="Weight-only quantization with onnxruntime.quantization: every MatMul with a constant\n"
                    "weight becomes MatMulNBits (symmetric, per block; accuracy_level 4 computes in int8 with\n"
                    "activations quantized per row, so rows never affect each other). Prints the size before\n"
                    "and after, and with --reference, how closely the outputs agree with the original\n"
                    "(cosine per row; top-1 agreement on the last axis).\n\n"
                    "--reference takes an .npz of input arrays by input name (numpy.savez('ref.npz',\n"
                    "input_ids=..., attention_mask=...)); several feeds of different shapes use prefixes:\n"
                    "'0/input_ids', '1/input_ids', ... Needs the onnx package: pip install 'edgeslm[quantize]'.",
        epilog="examples:\n"
               "  edgeslm quantize model.onnx model-int8.onnx --int8\n"
               "  edgeslm quantize model.onnx model-int4.onnx --int4 --block-size 32 --reference ref.npz\n"
               "  edgeslm quantize bert.onnx bert-int8.onnx --int8 --embeddings --reference ref.npz --min-cosine 0.99",
    )
    parser.add_argument("input", type=Path, metavar="IN", help="float ONNX model")
    parser.add_argument("output", type=Path, metavar="OUT", help="where to write the quantized model")
    bits = parser.add_mutually_exclusive_group(required=True)
    bits.add_argument("--int8", action="store_true", help="8-bit weights")
    bits.add_argument("--int4", action="store_true", help="4-bit weights")
    parser.add_argument("--block-size", type=int, default=32, choices=[16, 32, 64, 128, 256],
                        help="weights per scale (default 32)")
    parser.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                        help="MatMulNBits compute type: 4 = int8 (fast on CPUs), 0/1 = float32 (default 4)")
    parser.add_argument("--embeddings", action="store_true",
                        help="also quantize constant float Gather tables (embeddings) of at least 65536 elements "
                             "that only Gathers read: int8 with a scale per row, or for --int4 onnxruntime's "
                             "GatherBlockQuantized (4 bits per block). The same tables for both; each one left "
                             "fp32 is listed with the reason")
    parser.add_argument("--reference", type=Path, metavar="FEEDS.npz", help="inputs to measure the agreement on")
    parser.add_argument("--min-cosine", type=float, metavar="X",
                        help="with --reference: a threshold in (0, 1]; if any row's cosine is below X, exit 1 "
                             "and do not write OUT")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for the agreement run")
    parser.set_defaults(func=cmd_quantize)
