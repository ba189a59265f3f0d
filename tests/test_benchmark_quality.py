"""The quality benchmark's oracle column (the benchmark itself needs the
magnetic-tile photos, which stay outside the repository)."""

from __future__ import annotations

import numpy as np

from scripts.benchmark_quality import caught_at_false_alarms


def test_oracle_lets_at_most_two_percent_of_good_photos_through() -> None:
    good = np.arange(160, dtype=float)  # 0 .. 159
    # 2% of 160 is 3.2: the top 3 (157, 158, 159) may pass, the 4th (156)
    # may not, so only defects above 156 count as caught.
    bad = np.array([155.0, 156.0, 156.5, 157.0, 200.0])
    # (np.quantile(good, 0.98), 155.82, would let 4 through, 2.5%.)
    assert caught_at_false_alarms(good, bad, 0.02) == 3 / 5


def test_oracle_with_no_false_alarms_allowed() -> None:
    good = np.array([0.1, 0.2, 0.3])
    bad = np.array([0.25, 0.3, 0.31])
    assert caught_at_false_alarms(good, bad, 0.0) == 1 / 3
    assert caught_at_false_alarms(good, bad, 1.0) == 1.0
