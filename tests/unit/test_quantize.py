"""`edgeslm quantize` on small ONNX models built here: MatMulNBits int8/int4, embedding tables, agreement."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="edgeslm quantize needs the onnx package (the dev extra installs it)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeslm.cli import main  # noqa: E402
from edgeslm.cli.quantize import agreement, quantize_file  # noqa: E402
from edgeslm.convert.quantize import compare_outputs, load_feeds  # noqa: E402
from edgeslm.errors import QuantizeError  # noqa: E402

VOCAB, HIDDEN, CLASSES = 2000, 64, 12


def tiny_text_model(path: Path, seed: int = 0) -> Path:
    """ids [b, s] -> embedding table -> mean over s -> MatMul -> Relu -> MatMul -> logits [b, 12]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "table"),
        numpy_helper.from_array((rng.standard_normal((HIDDEN, 256)) / 8).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((256, CLASSES)) / 16).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], axis=0),
        helper.make_node("ReduceMean", ["emb", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def float_model(tmp_path: Path) -> Path:
    return tiny_text_model(tmp_path / "float.onnx")


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "ref.npz"
    np.savez(path, **{"0/input_ids": rng.integers(0, VOCAB, (16, 8)), "1/input_ids": rng.integers(0, VOCAB, (4, 20))})
    return path


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_int8_matmuls_become_matmulnbits_and_agree(tmp_path: Path, float_model: Path, reference: Path):
    out = tmp_path / "int8.onnx"
    counts = quantize_file(float_model, out, 8)
    assert (counts.matmuls, counts.matmulnbits, counts.tables, counts.skipped) == (2, 2, (), ())
    assert _ops(out).count("MatMulNBits") == 2 and "MatMul" not in _ops(out)
    [logits] = agreement(float_model, out, reference, threads=1)
    assert logits.rows == 20 and logits.min_cosine > 0.999 and logits.top1 >= 0.95


def test_int4_is_smaller_and_still_close(tmp_path: Path, float_model: Path, reference: Path):
    int8, int4 = tmp_path / "int8.onnx", tmp_path / "int4.onnx"
    quantize_file(float_model, int8, 8)
    quantize_file(float_model, int4, 4)
    assert int4.stat().st_size < int8.stat().st_size < float_model.stat().st_size
    [logits] = agreement(float_model, int4, reference, threads=1)
    assert logits.min_cosine > 0.98


def test_embedding_tables_int8_per_row(tmp_path: Path, float_model: Path, reference: Path):
    out = tmp_path / "emb8.onnx"
    counts = quantize_file(float_model, out, 8, embeddings=True)
    assert counts.tables == ("table",)
    assert out.stat().st_size < float_model.stat().st_size * 0.35  # the 2000x64 table dominates
    [logits] = agreement(float_model, out, reference, threads=1)
    assert logits.min_cosine > 0.999


def test_embedding_tables_int4_block_quantized(tmp_path: Path, float_model: Path, reference: Path):
    out = tmp_path / "emb4.onnx"
    quantize_file(float_model, out, 4, embeddings=True)
    assert "GatherBlockQuantized" in _ops(out)
    [logits] = agreement(float_model, out, reference, threads=1)
    assert logits.min_cosine > 0.95


def test_cli_prints_sizes_and_agreement(tmp_path: Path, float_model: Path, reference: Path, capsys):
    code = main(["quantize", str(float_model), str(tmp_path / "q.onnx"), "--int8", "--reference", str(reference),
                 "--min-cosine", "0.99"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 of 2 MatMuls as MatMulNBits" in out
    assert re.search(r"size: 0\.[56]\d MB -> 0\.[45]\d MB \(\d\d\.\d% of the original\)", out), out
    assert "agreement on ref.npz: logits: cosine min 0.99" in out and "top-1 agreement" in out


def test_cli_fails_below_min_cosine_and_writes_nothing(tmp_path: Path, float_model: Path, reference: Path, capsys):
    code = main(["quantize", str(float_model), str(tmp_path / "q.onnx"), "--int4", "--block-size", "256",
                 "--reference", str(reference), "--min-cosine", "0.99999999"])
    captured = capsys.readouterr()
    assert code == 1 and "agreement on ref.npz" in captured.out
    assert "FAILED: min cosine" in captured.err and "q.onnx was not written" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx", "ref.npz"]


def test_model_without_constant_matmuls_is_refused(tmp_path: Path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(QuantizeError, match="nothing would change"):
        quantize_file(tmp_path / "relu.onnx", tmp_path / "out.onnx", 8)


def test_bad_inputs_are_explained(tmp_path: Path, float_model: Path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert main(["quantize", str(tmp_path / "junk.onnx"), str(tmp_path / "o.onnx"), "--int8"]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["quantize", str(float_model), str(float_model), "--int8"]) == 1
    assert "OUT must differ from IN" in capsys.readouterr().err
    with pytest.raises(QuantizeError, match="cannot read reference inputs"):
        load_feeds(tmp_path / "junk.onnx")


def test_feeds_without_prefix_are_one_feed(tmp_path: Path):
    np.savez(tmp_path / "one.npz", input_ids=np.zeros((2, 3), np.int64), attention_mask=np.ones((2, 3), np.int64))
    [feed] = load_feeds(tmp_path / "one.npz")
    assert sorted(feed) == ["attention_mask", "input_ids"]


@pytest.mark.parametrize("value", ["2", "0", "-0.5", "nan"])
def test_min_cosine_outside_0_to_1_is_refused_before_any_work(tmp_path: Path, float_model: Path, reference: Path,
                                                               capsys, value: str):
    code = main(["quantize", str(float_model), str(tmp_path / "q.onnx"), "--int8", "--reference", str(reference),
                 "--min-cosine", value])
    assert code == 78, capsys.readouterr()
    assert f"--min-cosine {float(value)}: give a cosine similarity threshold in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


def test_min_cosine_without_reference_is_refused(tmp_path: Path, float_model: Path, capsys):
    code = main(["quantize", str(float_model), str(tmp_path / "q.onnx"), "--int8", "--min-cosine", "0.99"])
    assert code == 78
    assert "--min-cosine needs --reference FEEDS.npz" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_missing_reference_is_found_before_out_is_written(tmp_path: Path, float_model: Path, capsys):
    out = tmp_path / "out" / "q.onnx"
    code = main(["quantize", str(float_model), str(out), "--int8", "--reference", str(tmp_path / "nonexist.npz")])
    assert code == 1 and "nonexist.npz do not exist" in capsys.readouterr().err
    assert not out.parent.exists() and _listing(tmp_path) == ["float.onnx"]


def test_a_reference_that_does_not_fit_is_found_before_out_is_written(tmp_path: Path, float_model: Path, capsys):
    np.savez(tmp_path / "wrong.npz", token_ids=np.zeros((2, 3), np.int64))  # not the model's input name
    code = main(["quantize", str(float_model), str(tmp_path / "q.onnx"), "--int8", "--reference",
                 str(tmp_path / "wrong.npz")])
    assert code == 1 and "reference feed 0 does not fit float.onnx" in capsys.readouterr().err
    assert _listing(tmp_path) == ["float.onnx", "wrong.npz"]


def test_a_failed_write_leaves_no_partial_out(tmp_path: Path, float_model: Path, monkeypatch):
    import edgeslm.cli.quantize as cli_quantize

    def disk_full(model, path):
        path.write_bytes(b"half a model")
        raise QuantizeError(f"cannot write {path.name}: No space left on device")

    (tmp_path / "q.onnx").write_bytes(b"the previous run's model")
    monkeypatch.setattr(cli_quantize, "save_model", disk_full)
    with pytest.raises(QuantizeError, match="No space left"):
        quantize_file(float_model, tmp_path / "q.onnx", 8)
    assert _listing(tmp_path) == ["float.onnx", "q.onnx"]
    assert (tmp_path / "q.onnx").read_bytes() == b"the previous run's model"


def small_table_model(path: Path) -> Path:
    """A 1000x64 table (64000 elements, under the threshold) gathered, then a MatMul."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((1000, HIDDEN)).astype(np.float32), "embed.weight"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["emb"], axis=0),
             helper.make_node("MatMul", ["emb", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("bits", ["--int8", "--int4"])
def test_small_embedding_tables_are_named_with_the_reason(tmp_path: Path, capsys, bits: str):
    src = small_table_model(tmp_path / "small.onnx")
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), bits, "--embeddings"]) == 0
    out = capsys.readouterr().out
    assert "0 embedding table(s)" in out
    assert "embed.weight: 64000 elements, under the 65536 that --embeddings quantizes" in out and "left fp32" in out
    assert "GatherBlockQuantized" not in _ops(tmp_path / "q.onnx")  # int4 leaves the same tables as int8


def test_int4_and_int8_pick_the_same_tables(tmp_path: Path, float_model: Path):
    from edgeslm.convert.quantize import embedding_tables

    picked = embedding_tables(onnx.load(str(float_model)), min_elements=1 << 20)
    assert picked.chosen == () and picked.skipped[0].startswith("table: 128000 elements, under the 1048576")
    for bits in (8, 4):
        counts = quantize_file(float_model, tmp_path / f"q{bits}.onnx", bits, embeddings=True)
        assert counts.tables == ("table",) and counts.skipped == ()


def test_a_shared_table_and_unnamed_nodes_stay_a_valid_model(tmp_path: Path):
    """Two unnamed Gathers on one table: both read the quantized table, and the new nodes' names stay unique."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    table = numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "a"], ["ea"], axis=0),
             helper.make_node("Gather", ["table", "b"], ["eb"], axis=0),
             helper.make_node("Add", ["ea", "eb"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info(n, TensorProto.INT64, [3]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, CLASSES])],
                              initializer=[table, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "shared.onnx"))
    feed = {"a": np.array([1, 2, 3]), "b": np.array([4, 5, 6])}
    want = ort.InferenceSession(str(tmp_path / "shared.onnx")).run(None, feed)[0]
    for bits in (8, 4):
        out = tmp_path / f"q{bits}.onnx"
        assert quantize_file(tmp_path / "shared.onnx", out, bits, embeddings=True).tables == ("table",)
        got = ort.InferenceSession(str(out)).run(None, feed)[0]
        [agree] = compare_outputs({"y": want}, {"y": got})
        assert agree.min_cosine > (0.99 if bits == 4 else 0.999), (bits, agree)
