"""environment.yml and pyproject.toml must name the same packages with the same constraints."""

import re
import tomllib

import yaml

from tests.synthetic import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _normalize(requirement: str) -> str:
    return requirement.replace(" ", "").lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pinned = [r for r in pip_section if not r.startswith("-e")]
    assert {_name(r) for r in pinned} == {_name(r) for r in declared}
    by_name = {_name(r): _normalize(r) for r in pinned}
    for requirement in declared:
        if _name(requirement) == "torch":
            # The set-up pins torch==2.13.0 (a CPU wheel here; an open range pulls a CUDA build).
            assert by_name["torch"] == "torch==2.13.0"
            continue
        assert by_name[_name(requirement)] == _normalize(requirement), requirement
    assert any(r.startswith("-e") for r in pip_section), "the project itself must be installed"
