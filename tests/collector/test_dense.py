"""Dense histograms equal the JSON ones of ``collector.rollups``: same merge, same percentiles."""

from __future__ import annotations

import random

import pytest

from collector import dense, rollups

PS = (0, 1, 50, 90, 95, 99, 99.9, 100)


def _samples(seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [
        [rng.lognormvariate(7, 0.9) for _ in range(rng.randint(0, 400))]
        + [0.0] * rng.choice((0, 0, 3))
        for _ in range(25)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dense_matches_json_histograms(seed: int) -> None:
    parts = [rollups.histogram(s) for s in _samples(seed)]
    as_json = rollups.merge(parts)
    packed = [dense.pack(dense.from_dict(p)) for p in parts]
    merged = dense.merge(dense.unpack(b) for b in packed)
    assert dense.to_dict(merged) == as_json
    assert dense.to_dict(dense.merge_packed(packed)) == as_json  # straight from the bytes
    assert merged.total == rollups.total(as_json)
    assert dense.percentiles(merged, PS) == rollups.percentiles(as_json, PS)


def test_empty_and_zero_only() -> None:
    assert dense.percentiles(dense.merge([]), (50,)) == {50: None}
    zeros = dense.from_dict({"z": 4})
    assert dense.unpack(dense.pack(zeros)).zero == 4
    assert dense.percentiles(zeros, (50, 99)) == {50: 0.0, 99: 0.0}
    assert dense.to_dict(dense.unpack(dense.pack(dense.from_dict({})))) == {}
    assert dense.to_dict(dense.merge_packed([])) == {}
    empty, zeros_only = dense.pack(dense.from_dict({})), dense.pack(zeros)
    assert dense.to_dict(dense.merge_packed([empty, zeros_only, zeros_only])) == {"z": 8}
