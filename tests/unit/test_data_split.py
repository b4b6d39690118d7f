import pytest

from tuner.data import split_records


def test_split_sizes_follow_the_ratio_and_keep_every_record():
    train, test = split_records(list(range(100)), 0.2, seed=1)

    assert (len(train), len(test)) == (80, 20)
    assert sorted(train + test) == list(range(100))


def test_split_is_seeded():
    assert split_records(list(range(50)), 0.1, seed=3) == split_records(list(range(50)), 0.1, seed=3)
    assert split_records(list(range(50)), 0.1, seed=3) != split_records(list(range(50)), 0.1, seed=4)


def test_zero_ratio_leaves_test_empty():
    train, test = split_records([1, 2, 3], 0)

    assert test == [] and sorted(train) == [1, 2, 3]


def test_train_keeps_at_least_one_record_and_small_sets_still_get_a_test_record():
    assert [len(part) for part in split_records([1], 0.5)] == [1, 0]
    assert [len(part) for part in split_records([1, 2], 0.9)] == [1, 1]
    assert [len(part) for part in split_records(list(range(5)), 0.05)] == [4, 1]


@pytest.mark.parametrize("ratio", [-0.1, 1, 1.5])
def test_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(ValueError):
        split_records([1, 2, 3], ratio)
