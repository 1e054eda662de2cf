"""The `heatbath` command."""

import os
import re

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
    assert "max \\|mean-ref\\|/sd" in out and "min ESS" in out and "max R-hat" in out
    assert os.path.getsize(fig) > 10_000


def test_sample_command_and_its_errors(tmp_path, capsys):
    fig = str(tmp_path / "sample.png")
    assert main(["sample", "eight_schools_noncentered", "--step-size", "0.03", "--steps", "500", "--chains", "2",
                 "--quiet", "--figure", fig]) == 0
    assert "| sgld (h=0.03)" in capsys.readouterr().out
    assert os.path.getsize(fig) > 10_000
    assert main(["sample", "nowhere", "--step-size", "0.1", "--quiet"]) == 2
    assert "unknown" in capsys.readouterr().err.lower()
    with pytest.raises(SystemExit):
        main(["sample", "german_credit", "--step-size", "0.1", "--sampler", "magic"])



def _help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _entries(text):
    """The help's argument entries: {first word: the entry's text, continuation lines joined}."""
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  \S", line):  # an argument (or subcommand) entry starts at column 2
            current = line.strip()
            entries[current.split()[0].rstrip(",")] = current
        elif current is not None and re.match(r"^ {3,}\S", line):
            entries[current.split()[0].rstrip(",")] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["demo", "references", "sample"])
def test_help_describes_every_option_with_its_default(command, capsys):
    text = _help([command, "--help"], capsys)
    usage = text.split("\n\n")[0]
    flags = sorted(set(re.findall(r"\[?(--[a-z-]+)", usage)))
    entries = _entries(text)
    for flag in flags:
        entry = entries.get(flag)
        assert entry is not None, f"heatbath {command} {flag} is missing from --help"
        assert len(entry) > len(flag) + 20, f"heatbath {command} {flag} has no help: {entry!r}"
        if flag != "--help":
            assert "default" in entry or "required" in entry, f"heatbath {command} {flag} does not say its default"
    if command == "sample":
        assert set(flags) >= {"--sampler", "--step-size", "--friction", "--temperature", "--batch-size", "--steps",
                              "--warmup", "--chains", "--thinning", "--seed", "--figure", "--quiet"}
        assert len(entries["name"]) > 30  # the positional argument too
        assert "(default: sgld)" in entries["--sampler"] and "(default: 20000)" in entries["--steps"]
        assert "Choosing a step size" in entries["--step-size"]
    if command == "demo":
        assert "(default: 100000)" in entries["--steps"] and "(default: heatbath_demo.png)" in entries["--figure"]


def test_top_level_help_lists_the_commands(capsys):
    text = _help(["--help"], capsys)
    for command in ("demo", "references", "sample"):
        assert re.search(rf"^ +{command}\s+\S+ \S+", text, re.M), f"{command} has no help line"
    assert "COMMAND --help" in text

def test_the_readme_has_the_section_the_cli_points_to():
    readme = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
    if not os.path.exists(readme):
        pytest.skip("no README.md next to tests/ (installed package)")
    with open(readme, encoding="utf-8") as f:
        assert "\n## Choosing a step size\n" in f.read()


def _fake_result(name, values):
    import types

    return (name, types.SimpleNamespace(samples=values))


def test_figure_draws_the_reference_from_its_draws_and_labels_the_axes():
    import matplotlib.pyplot as plt
    import numpy as np

    import heatbath as hb
    from heatbath.cli import marginal_figure

    ref = hb.models.reference("eight_schools_noncentered")  # posteriordb: ships 10 x 1000 draws
    rng = np.random.default_rng(0)
    tau = np.abs(rng.normal(3.0, 3.0, size=(2, 500)))
    fig = marginal_figure([_fake_result("sgld", {"tau": tau})], ref, "tau")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "tau" and ax.get_ylabel() == "density"
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["reference draws", "sgld"]
    # The reference histogram is the bundled draws' (a skewed marginal stays skewed).
    heights = np.array([p.get_height() for p in ax.patches[:60]])
    edges = np.array([p.get_x() for p in ax.patches[:60]])
    width = ax.patches[0].get_width()
    expected, _ = np.histogram(ref.draws["tau"].ravel(), bins=60, range=(edges[0], edges[-1] + width), density=True)
    np.testing.assert_allclose(heights, expected, rtol=1e-6)
    assert "reference draws" in fig._suptitle.get_text()
    plt.close(fig)


def test_figure_falls_back_to_the_moments_and_says_so():
    import matplotlib.pyplot as plt
    import numpy as np

    import heatbath as hb
    from heatbath.cli import marginal_figure

    ref = hb.models.reference("german_credit")  # inference_gym: moments only
    assert ref.draws is None
    w = np.random.default_rng(0).normal(size=(2, 100, 25))
    fig = marginal_figure([_fake_result("sgld", {"weights": w})], ref, "weights")
    axes = [a for a in fig.axes if a.get_visible() and a.axison]
    assert len(axes) == 25
    assert [a.get_xlabel() for a in axes[:2]] == ["weights[0]", "weights[1]"]
    assert axes[0].get_ylabel() == "density" and axes[5].get_ylabel() == "density"
    assert axes[0].get_legend_handles_labels()[1] == ["reference N(mean, sd)", "sgld"]
    assert "ships no reference draws" in fig._suptitle.get_text()
    plt.close(fig)
