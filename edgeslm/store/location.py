"""Where the model store lives: an explicit folder, systemd's state directory, or the user's data folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

STORE_SUBDIR = "models"


def default_store_dir(env: Mapping[str, str], home: Path | None = None) -> Path:
    """The store folder when none is configured.

    Under systemd (`StateDirectory=edgeslm` sets $STATE_DIRECTORY, e.g. /var/lib/edgeslm) it is
    `$STATE_DIRECTORY/models`; otherwise `$XDG_DATA_HOME/edgeslm/models`, i.e.
    ~/.local/share/edgeslm/models.
    """
    state = env.get("STATE_DIRECTORY", "")
    if state:
        # systemd joins several StateDirectory= entries with ':'; the first is ours.
        return Path(state.split(":")[0]) / STORE_SUBDIR
    data_home = env.get("XDG_DATA_HOME", "")
    if data_home:
        return Path(data_home) / "edgeslm" / STORE_SUBDIR
    return (home or Path.home()) / ".local" / "share" / "edgeslm" / STORE_SUBDIR


def store_dir(configured: Path | None, env: Mapping[str, str]) -> Path:
    """`configured` (the `[store] dir` key, also set by $EDGESLM_STORE_DIR) when given, else the default."""
    if configured is not None:
        return Path(configured).expanduser()
    return default_store_dir(env)
