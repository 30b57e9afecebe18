"""benchmarks/device_check.py's dry version (what runs on a CPU) writes a report from its measurements."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import device_check  # noqa: E402


def test_dry_run_measures_every_configuration_and_projects_the_grid(tmp_path):
    out = tmp_path / "report.md"
    report = device_check.main(["--dry", "--no-tests", f"--out={out}"])
    assert out.read_text().strip() == report.strip()
    assert "dry run" in report and "Not measured" not in report
    for name in ("swimmer", "hopper"):
        for k in device_check.DRY.members:
            assert f"| {k} |" in report
    grid = device_check.project_grid({"swimmer": [{"members": 5, "epoch_ms": 2.0, "eval_ms": 10.0}],
                                      "hopper": [{"members": 5, "epoch_ms": 20.0, "eval_ms": 100.0}]},
                                     device_check.FULL.sizes)
    hours = {g["data set"]: g["hours"] for g in grid}
    assert hours["hopper"] == (3 * (200_000 * 20.0 + 1000 * 100.0) / 1e3 / 3600)  # 15 members: 3 programs of 5
    assert hours["swimmer"] < hours["reacher"] < 1.51 * hours["swimmer"]  # 1.5x the epochs, ~the same FLOPs
    for line in ("| swimmer |", "| reacher |", "| hopper |"):
        assert line in report


def test_default_report_path_follows_the_backend():
    assert device_check.default_out("cpu", dry=False) == ""
    assert device_check.default_out("gpu", dry=True) == ""
    assert device_check.default_out("gpu", dry=False).endswith(os.path.join("results", "bench_gpu.md"))
