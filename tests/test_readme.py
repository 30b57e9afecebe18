"""README claims stay tied to the recorded results: every number of "What we found" is in
results/README.md or a generated results table (results/paper/claims.md, results/torch_check/table.md,
results/paper/precision.md), repository docs do not point outside the repository, the paper is cited."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# The folder beside the repository that the development notes live in; a clone has no such folder,
# so no document may link there (written in two parts so this file does not link there either).
OUTSIDE = "../" + "sha" + "red"


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, title
    return match.group(1)


def test_every_number_of_what_we_found_is_in_the_results():
    results = "".join((ROOT / "results" / name).read_text()
                      for name in ("README.md", "paper/claims.md", "paper/precision.md", "torch_check/table.md"))
    numbers = re.findall(r"\d+\.\d+(?:e-\d+)?", section("What we found"))
    assert len(numbers) >= 10
    for number in numbers:
        assert number in results, number


def test_docs_stay_inside_the_repository_and_cite_the_paper():
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("results/**/*.md")]:
        assert OUTSIDE not in path.read_text(), path
    cite = section("Citing")
    for name in ("Andriopoulos", "Dong", "Guo", "Zhao", "Ross", "NeurIPS", "2024",
                 "The Prevalence of Neural Collapse in Neural Multivariate Regression"):
        assert name in cite
