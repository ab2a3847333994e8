"""`edgeslm quantize IN OUT --int8|--int4`: weight-only quantization of a user's ONNX model, with its agreement."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeslm.errors import QuantizeError


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


def quantize_file(src: Path, dst: Path, bits: int, *, block_size: int = 32, accuracy_level: int = 4,
                  embeddings: bool = False) -> dict[str, int]:
    """Write `dst`, the weight-only quantized `src`; returns counts of what changed."""
    import onnx

    from edgeslm.convert.quantize import quantize_gathers_int4, quantize_gathers_int8, quantize_matmuls

    if not src.is_file():
        raise QuantizeError(f"{src} does not exist; give an .onnx file")
    if dst.resolve() == src.resolve():
        raise QuantizeError("OUT must differ from IN; the original is needed to measure agreement")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX files
        raise QuantizeError(f"cannot read {src} as ONNX: {exc}") from None
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    model = quantize_matmuls(model, bits, block_size=block_size, accuracy_level=accuracy_level)
    after = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    gathers = 0
    if embeddings:
        if bits == 8:
            gathers = len(quantize_gathers_int8(model))
        else:
            model = quantize_gathers_int4(model, block_size=max(block_size, 16))
            gathers = sum(1 for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    if after == 0 and gathers == 0:
        raise QuantizeError(f"{src.name} has no MatMul with a constant weight (of {before} MatMuls) and no "
                            "embedding table to quantize; nothing would change")
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > (1 << 31) - (1 << 20)
    onnx.save(model, str(dst), save_as_external_data=large, location=f"{dst.name}.data" if large else None)
    return {"matmuls": before, "matmulnbits": after, "gathers": gathers}


def agreement(src: Path, dst: Path, reference: Path, threads: int) -> list:
    from edgeslm.convert.quantize import compare_outputs, load_feeds
    from edgeslm.core.tensors import pad_stack
    from edgeslm.runtime import EngineOptions, open_engine

    feeds = load_feeds(reference)
    results = {}
    for label, path in (("original", src), ("quantized", dst)):
        engine = open_engine(path, "onnx", EngineOptions(threads=threads))
        try:
            runs = []
            for i, feed in enumerate(feeds):
                try:
                    runs.append(engine.run(feed))
                except Exception as exc:
                    raise QuantizeError(f"reference feed {i} does not fit {path.name}: {exc}") from None
            results[label] = {name: pad_stack([r[name] for r in runs]) for name in runs[0]}
        finally:
            engine.close()
    return compare_outputs(results["original"], results["quantized"])


def cmd_quantize(args: argparse.Namespace) -> int:
    bits = 8 if args.int8 else 4
    counts = quantize_file(args.input, args.output, bits, block_size=args.block_size,
                           accuracy_level=args.accuracy_level, embeddings=args.embeddings)
    before, after = _onnx_size(args.input), _onnx_size(args.output)
    print(f"{args.input} -> {args.output}: int{bits} weight-only, {counts['matmulnbits']} of "
          f"{counts['matmuls']} MatMuls as MatMulNBits (block {args.block_size}, accuracy_level "
          f"{args.accuracy_level})" + (f", {counts['gathers']} embedding table(s)" if args.embeddings else ""))
    print(f"size: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / before:.1%} of the original)")
    if args.reference is None:
        print("agreement: not measured; pass --reference FEEDS.npz (numpy.savez of the model's inputs)")
        return 0
    worst = 1.0
    for item in agreement(args.input, args.output, args.reference, args.threads):
        print(f"agreement on {args.reference.name}: {item.describe()}")
        worst = min(worst, item.min_cosine)
    if args.min_cosine is not None and worst < args.min_cosine:
        print(f"FAILED: min cosine {worst:.4f} < --min-cosine {args.min_cosine}")
        return 1
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
                        help="also quantize large constant Gather tables (embeddings): int8 per row, or "
                             "onnxruntime's GatherBlockQuantized for --int4")
    parser.add_argument("--reference", type=Path, metavar="FEEDS.npz", help="inputs to measure the agreement on")
    parser.add_argument("--min-cosine", type=float, metavar="X", help="exit 1 if any row's cosine is below X")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for the agreement run")
    parser.set_defaults(func=cmd_quantize)
