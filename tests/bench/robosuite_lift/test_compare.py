from __future__ import annotations

import pytest

from bench.robosuite_lift.compare import RunConfig, steps_to, table


def run_result(method: str, rates: list[tuple[float, float]]) -> dict[str, object]:
    return {
        "config": {"method": method},
        "curve": [{"steps": steps, "success_rate": rate, "updates": 0.0} for steps, rate in rates],
    }


def test_steps_to_is_the_first_evaluation_at_the_rate() -> None:
    curve = [{"steps": 0.0, "success_rate": 0.4}, {"steps": 2000.0, "success_rate": 0.9}]
    assert steps_to(curve, 0.9) == 2000.0
    assert steps_to(curve, 0.95) is None


def test_the_table_aggregates_seeds_at_each_checkpoint() -> None:
    results = {
        "base": [run_result("base", [(0, 0.5)])],
        "pld": [
            run_result("pld", [(1010, 0.4), (2030, 0.8), (3005, 1.0)]),
            run_result("pld", [(1050, 0.6), (2000, 1.0), (3060, 1.0)]),
        ],
    }
    text = table(results, [1000, 2000, 3000])
    lines = text.splitlines()
    assert lines[2] == "| base | 1 | 50 +- 0 % | 50 +- 0 % | 50 +- 0 % | never |"
    assert lines[3] == "| pld | 2 | 50 +- 10 % | 90 +- 10 % | 100 +- 0 % | 3005, 2000 |"


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        RunConfig(method="ppo", seed=0)
