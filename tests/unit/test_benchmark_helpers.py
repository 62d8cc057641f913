"""The benchmarks' own arithmetic, without a GPU or a fleet."""

from __future__ import annotations

from benchmarks.fleet import summarise
from benchmarks.host_cpus import speeds


def _run(config: str, rtfx: float) -> dict:
    return {"config": config, "levels": [{"rtfx": rtfx}]}


def test_one_instance_is_the_mean_of_every_instance_alone():
    result = {
        "runs": [
            _run("instance 0 alone (direct)", 500.0),
            _run("instance 1 alone (direct)", 400.0),
            _run("fleet of 2 via nginx", 855.0),
            _run("1 instance via nginx", 450.0),
        ]
    }
    summarise(result)
    assert result["one_instance_rtfx"] == 450.0
    assert result["one_instance_spread"] == [400.0, 500.0]
    assert [r["vs_one_instance"] for r in result["runs"]] == [1.111, 0.889, 1.9, 1.0]


def test_a_run_where_everything_failed_has_no_ratios():
    result = {"runs": [_run("instance 0 alone (direct)", 0.0), _run("fleet of 2 via nginx", 0.0)]}
    summarise(result)
    assert "one_instance_rtfx" not in result and "vs_one_instance" not in result["runs"][1]


def test_host_cpu_probe_counts_in_every_process():
    rates = speeds(2, 0.2)
    assert len(rates) == 2 and all(r > 0 for r in rates)
