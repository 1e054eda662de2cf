"""The `heatbath` command."""

import os

import pytest

from heatbath.cli import main


def test_references_lists_every_target(capsys):
    assert main(["references"]) == 0
    out = capsys.readouterr().out
    assert "ig_german_credit_numeric_logistic_regression" in out and "arK-arK" in out
    assert len([l for l in out.splitlines() if "N=" in l]) == 9


def test_demo_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    fig = str(tmp_path / "demo.png")
    assert main(["demo", "--steps", "3000", "--chains", "2", "--quiet", "--figure", fig]) == 0
    out = capsys.readouterr().out
    for method in ("SGLD", "pSGLD", "SGLD-CV"):
        assert f"| {method} (h=" in out
    assert "max |mean-ref|/sd" in out and "min ESS" in out and "max R-hat" in out
    assert os.path.getsize(fig) > 10_000


def test_sample_command_and_its_errors(capsys):
    assert main(["sample", "eight_schools_noncentered", "--step-size", "0.03", "--steps", "500", "--chains", "2",
                 "--quiet"]) == 0
    assert "| sgld (h=0.03)" in capsys.readouterr().out
    assert main(["sample", "nowhere", "--step-size", "0.1", "--quiet"]) == 2
    assert "unknown" in capsys.readouterr().err.lower()
    with pytest.raises(SystemExit):
        main(["sample", "german_credit", "--step-size", "0.1", "--sampler", "magic"])
