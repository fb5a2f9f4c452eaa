from collections import Counter

from rsa_service.core.plan import choose_candidates, choose_member, choose_subset, generation_seed


def test_subsets_depend_only_on_seed_round_slot() -> None:
    survivors = list(range(16))
    first = [choose_subset(7, 1, slot, survivors, 4) for slot in range(16)]
    again = [choose_subset(7, 1, slot, survivors, 4) for slot in range(16)]
    assert first == again
    assert first != [choose_subset(8, 1, slot, survivors, 4) for slot in range(16)]
    assert first != [choose_subset(7, 2, slot, survivors, 4) for slot in range(16)]


def test_subset_is_sorted_without_replacement_from_survivors() -> None:
    survivors = [0, 2, 3, 5, 9]
    for slot in range(50):
        chosen = choose_subset(1, 1, slot, survivors, 3)
        assert chosen == sorted(chosen) and len(set(chosen)) == 3 and set(chosen) <= set(survivors)


def test_fewer_survivors_than_k_shows_all() -> None:
    assert choose_subset(0, 1, 0, [4, 1], 4) == [1, 4]


def test_k1_draws_one_tail() -> None:
    assert len(choose_subset(0, 3, 2, list(range(8)), 1)) == 1


def test_subsets_are_roughly_uniform() -> None:
    counts: Counter[int] = Counter()
    for slot in range(4000):
        counts.update(choose_subset(3, 1, slot, list(range(8)), 2))
    # each of 8 candidates is expected 1000 times; binomial sd ≈ 29
    assert all(850 < count < 1150 for count in counts.values()), counts


def test_generation_seeds_are_stable_and_distinct() -> None:
    assert generation_seed(1, 0, 0) == generation_seed(1, 0, 0)
    seeds = {generation_seed(1, r, s, a) for r in range(3) for s in range(16) for a in range(3)}
    assert len(seeds) == 144 and all(0 <= seed < 2**31 for seed in seeds)


def test_choose_member() -> None:
    assert choose_member(5, [3, 7, 9]) == choose_member(5, [9, 3, 7])
    assert choose_member(5, [3, 7, 9]) in {3, 7, 9}


def test_k1_is_bounded_continuation_of_each_lineage() -> None:
    survivors = list(range(16))
    assert [choose_candidates(3, 1, slot, survivors, 1) for slot in range(16)] == [[slot] for slot in range(16)]
    lost = [0, 1, 2, 4, 5]  # slot 3's own trace failed: it takes a survivor drawn from (seed, round, slot)
    assert choose_candidates(3, 1, 3, lost, 1) == choose_subset(3, 1, 3, lost, 1)
    assert choose_candidates(3, 1, 3, lost, 1)[0] in lost
    assert choose_candidates(3, 1, 5, survivors, 4) == choose_subset(3, 1, 5, survivors, 4)
