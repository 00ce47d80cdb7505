"""The benchmarks' paired statistics: intervals that cover, differences found, nulls not."""
import math

import numpy as np
import pytest

from benchmarks import paired_stats
from errors import UserError


def _experiments(true_difference, seeds, trials, seed_spread=10.0, noise=1.0, rng_seed=0):
  """Per-seed (variant, baseline) values of `trials` synthetic benchmarks: a seed effect shared by
  both variants (common random numbers) plus independent noise."""
  rng = np.random.default_rng(rng_seed)
  shared = rng.normal(0.0, seed_spread, size=(trials, seeds))
  baseline = 40.0 + shared + rng.normal(0.0, noise, size=(trials, seeds))
  variant = 40.0 + true_difference + shared + rng.normal(0.0, noise, size=(trials, seeds))
  return variant, baseline


def _differences(variant, baseline):
  return [paired_stats.paired_difference(dict(enumerate(v)), dict(enumerate(b)))
          for v, b in zip(variant, baseline)]


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_interval_covers_the_true_difference_95_percent_of_the_time(seeds):
  trials = 4000
  variant, baseline = _experiments(2.0, seeds, trials)
  covered = np.mean([d.low <= 2.0 <= d.high for d in _differences(variant, baseline)])
  # Binomial standard error at 4000 trials: 0.0034; the band is ±3 of them.
  assert 0.94 <= covered <= 0.96, covered


def test_a_known_difference_is_found_and_its_sign_read():
  variant, baseline = _experiments(3.0, 5, 1)
  difference = _differences(variant, baseline)[0]
  assert difference.low <= 3.0 <= difference.high
  assert paired_stats.verdict(difference) == paired_stats.WORSE  # a larger distance is worse
  assert paired_stats.verdict(difference, lower_is_better=False) == paired_stats.BETTER
  flipped = _differences(baseline, variant)[0]
  assert paired_stats.verdict(flipped) == paired_stats.BETTER


def test_the_seed_spread_does_not_hide_a_difference_pairing_removes():
  """A difference 10 times smaller than the spread between seeds is found when paired; the
  unpaired means' intervals overlap."""
  variant, baseline = _experiments(3.0, 5, 1, seed_spread=30.0, noise=0.5, rng_seed=3)
  difference = _differences(variant, baseline)[0]
  assert paired_stats.verdict(difference) == paired_stats.WORSE
  a, b = paired_stats.t_interval(variant[0]), paired_stats.t_interval(baseline[0])
  assert a.low < b.high and b.low < a.high


def test_a_null_difference_is_called_one_in_twenty_times():
  variant, baseline = _experiments(0.0, 5, 4000, rng_seed=1)
  verdicts = [paired_stats.verdict(d) for d in _differences(variant, baseline)]
  false_calls = np.mean([v != paired_stats.NO_DIFFERENCE for v in verdicts])
  assert 0.04 <= false_calls <= 0.06, false_calls
  assert verdicts.count(paired_stats.BETTER) > 0 and verdicts.count(paired_stats.WORSE) > 0


def test_the_detectable_difference_is_found_with_80_percent_power():
  seeds, noise = 5, 1.0
  std_of_differences = math.sqrt(2.0) * noise
  detectable = paired_stats.detectable_difference(std_of_differences, seeds)
  variant, baseline = _experiments(detectable, seeds, 4000, noise=noise, rng_seed=2)
  found = np.mean([paired_stats.verdict(d) == paired_stats.WORSE
                   for d in _differences(variant, baseline)])
  # The t-quantile power formula is an approximation (the noncentral t is exact): within 5 points.
  assert 0.75 <= found <= 0.85, found
  assert paired_stats.detectable_difference(std_of_differences, 10) < detectable


def test_pairing_uses_common_seeds_and_refuses_none():
  difference = paired_stats.paired_difference({0: 5.0, 1: 7.0, 2: 9.0}, {1: 6.0, 2: 8.0, 3: 0.0})
  assert difference.n == 2 and difference.mean == pytest.approx(1.0) and difference.std == 0.0
  with pytest.raises(UserError, match="No common seed"):
    paired_stats.paired_difference({0: 1.0}, {1: 1.0})
  one = paired_stats.paired_difference({0: 1.0}, {0: 3.0})
  assert one.n == 1 and one.low == -math.inf and paired_stats.verdict(one) == (
      paired_stats.NO_DIFFERENCE)
  with pytest.raises(UserError, match="finite"):
    paired_stats.t_interval([1.0, float("nan")])


def test_formats():
  interval = paired_stats.t_interval([1.0, 2.0, 3.0])
  assert paired_stats.format_value(interval) == "2.0 ± 2.5"
  assert paired_stats.format_difference(interval) == "+2.0 [-0.5, +4.5]"
