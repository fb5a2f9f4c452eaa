import gc

from rsa_service.runtime import settle_heap


def test_settle_heap_freezes_what_is_alive_and_still_collects_new_garbage() -> None:
    try:
        settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # garbage made after start-up is still found
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
