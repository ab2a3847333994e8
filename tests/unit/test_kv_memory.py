"""The KV cache takes memory as positions are written, a small page at a time (no transparent huge pages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslm.tasks.decoder import lazy_zeros


def mapping_kb(array: np.ndarray) -> dict[str, int]:
    """Rss and AnonHugePages (kB) summed over the memory mappings that hold `array`, from /proc/self/smaps
    (a mapping can be split where part of it was advised differently)."""
    first, last = array.ctypes.data, array.ctypes.data + array.nbytes
    inside, fields = False, {"Rss": 0, "AnonHugePages": 0}
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start < last and first < end
        elif inside and head[:-1] in fields:
            fields[head[:-1]] += int(line.split()[1])
    return fields


def write_first_positions(cache: np.ndarray) -> None:
    """What a sequence's first token does to one layer's cache [slots, kv_heads, context, head_dim]."""
    for slot in range(cache.shape[0]):
        cache[slot, :, 0, :] = 1.0


def test_a_first_token_in_every_slot_takes_kilobytes_not_huge_pages():
    shape = (4, 3, 2048, 64)  # SmolLM2: 4 slots of 2048 positions, 6 MiB per layer and kind
    cache = lazy_zeros(shape)
    assert cache.shape == shape and cache.dtype == np.float32 and cache.flags.writeable and not cache.any()
    write_first_positions(cache)
    used = mapping_kb(cache)
    assert used["AnonHugePages"] == 0 and used["Rss"] <= 4 * 3 * 4 * 4, used  # a 4 KiB page per slot and head
    assert cache[3, 2, 0, 63] == 1.0 and cache[3, 2, 1, 0] == 0.0

