"""The daemon's cyclic-collector settings while it serves."""

import gc

from edgeslm.server.daemon import GC_YOUNG_THRESHOLD, settle_collector


def test_settle_collector_freezes_start_up_and_raises_the_young_threshold():
    before = gc.get_threshold()
    kept = type("Kept", (), {})()  # a tracked object made before settling
    try:
        settle_collector()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0 and gc.is_tracked(kept)
        assert not any(o is kept for o in gc.get_objects())  # frozen: out of every generation's walk
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
