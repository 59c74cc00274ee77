"""Which patches an epoch draws: a function of the seed and the epoch only."""


from medseg.data.sampling import EpochSampler


def test_sampler_depends_only_on_seed_and_epoch():
    first, again = EpochSampler(10, 6, seed=1), EpochSampler(10, 6, seed=1)
    again.set_epoch(3)
    again.set_epoch(0)
    assert list(first) == list(again) and len(first) == 6
    first.set_epoch(1)
    assert [key[2] for key in first] != [key[2] for key in again]
    assert all(key[0] == 1 for key in first)


def test_one_pass_per_epoch_without_iterations():
    sampler = EpochSampler(5, None, seed=0)
    assert sorted(index for _, _, index in sampler) == [0, 1, 2, 3, 4]
