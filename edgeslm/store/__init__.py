"""The model store and the catalogue of models `edgeslm pull` can build."""

from edgeslm.store.fetch import Fetched, Fetcher, PipFetcher
from edgeslm.store.location import default_store_dir, store_dir
from edgeslm.store.progress import NullProgress, Progress, RecordingProgress, TqdmProgress
from edgeslm.store.recipes import CATALOGUE, Recipe, find_recipe
from edgeslm.store.store import CatalogueEntry, Installed, ModelStore, PullResult

__all__ = [
    "CATALOGUE", "CatalogueEntry", "Fetched", "Fetcher", "Installed", "ModelStore", "NullProgress", "PipFetcher",
    "Progress", "PullResult", "Recipe", "RecordingProgress", "TqdmProgress", "default_store_dir", "find_recipe",
    "store_dir",
]
