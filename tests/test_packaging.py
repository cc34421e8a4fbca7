"""Dockerfile, requirements.txt and setup.py stay in step (no Docker engine is needed: the files are
read, not built). A Dataflow or Flink job only runs when the launcher, the SDK container and the
workers' packages agree on the Beam version and the Python minor version."""
from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path

import apache_beam
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


# -- readers ------------------------------------------------------------------------------------
def setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setup(), captured by running it with setup()
    replaced (nothing is built or installed)."""
    import setuptools

    captured: dict = {}
    saved_setup, saved_cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(ROOT)  # find_packages() looks in the current directory
        runpy.run_path(str(ROOT / "setup.py"), run_name="setup_py_under_test")
    finally:
        setuptools.setup = saved_setup
        os.chdir(saved_cwd)
    assert captured, "setup.py did not call setup()"
    return captured


def requirements_txt() -> list[Requirement]:
    reqs = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_stages() -> list[tuple[str, str | None]]:
    """(base image, stage name) of each FROM, in order, as written (build arguments unexpanded)."""
    stages = []
    for ins, args in dockerfile_instructions():
        if ins == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            stages.append((words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
    return stages


def dockerfile_arg_defaults() -> dict[str, str]:
    return dict(args.split("=", 1) for ins, args in dockerfile_instructions() if ins == "ARG" and "=" in args)


def beam_pin(requirement: str) -> str:
    req = Requirement(requirement)
    assert canonicalize_name(req.name) == "apache-beam"
    (spec,) = req.specifier
    assert spec.operator == "==", f"Beam must be pinned exactly: {requirement}"
    return spec.version


@pytest.fixture(scope="module")
def setup_py() -> dict:
    return setup_kwargs()


@pytest.fixture(scope="module")
def beam_version(setup_py) -> str:
    beams = [r for r in setup_py["install_requires"] if canonicalize_name(Requirement(r).name) == "apache-beam"]
    assert len(beams) == 1, "setup.py's install_requires should name apache-beam once"
    return beam_pin(beams[0])


# -- Beam version -------------------------------------------------------------------------------
def test_one_beam_version_everywhere(setup_py, beam_version):
    beam_stages = [(image, name) for image, name in dockerfile_stages() if image.startswith("apache/beam_python")]
    assert len(beam_stages) == 1, "the Dockerfile should take Beam's SDK harness from one apache/beam_python image"
    (image, name), = beam_stages
    found = re.fullmatch(r"apache/beam_python(\S+)_sdk:(\S+)", image)
    assert found and found.group(2) == beam_version, f"Dockerfile's Beam image {image} is not Beam {beam_version}"
    copies = [args for ins, args in dockerfile_instructions() if ins == "COPY" and "--from=" in args]
    assert copies == [f"--from={name} /opt/apache/beam /opt/apache/beam"], copies

    (beam_req,) = [r for r in requirements_txt() if canonicalize_name(r.name) == "apache-beam"]
    assert beam_pin(str(beam_req)) == beam_version

    for extra, reqs in setup_py.get("extras_require", {}).items():
        for r in reqs:
            if canonicalize_name(Requirement(r).name) == "apache-beam":
                assert beam_pin(r) == beam_version, f"extra {extra!r} pins {r}"

    # and the Beam these tests run on (a launcher on another version submits a job the workers reject)
    assert apache_beam.__version__ == beam_version


# -- Python version -----------------------------------------------------------------------------
def supported_pythons(setup_py) -> list[str]:
    return [c.rsplit(" ", 1)[1] for c in setup_py["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]


def test_python_versions_agree_in_setup_requirements_and_dockerfile(setup_py):
    """setup.py installs on exactly the Pythons it names (those every pin has wheels for), the
    container is built for one of them, with the harness and the base image of the same Python."""
    pythons = supported_pythons(setup_py)
    assert pythons == ["3.11", "3.12", "3.13"]
    allowed = SpecifierSet(setup_py["python_requires"])
    assert [f"3.{m}" for m in range(6, 20) if Version(f"3.{m}.0") in allowed] == pythons
    header = (ROOT / "requirements.txt").read_text().split("\napache-beam")[0]
    assert ", ".join(pythons[:-1]) + f", {pythons[-1]}" in header, "requirements.txt should say which Pythons its pins serve"
    # one build argument names the Python of both images, and its default is a supported one
    stages = dockerfile_stages()
    final_base = stages[-1][0]  # the image the container runs is the last stage's
    assert final_base == "python:${PYTHON_VERSION}-slim", final_base
    assert any(image == "apache/beam_python${PYTHON_VERSION}_sdk:" + image.split(":")[1] for image, _ in stages[:-1])
    assert dockerfile_arg_defaults().get("PYTHON_VERSION") in pythons
    # and these tests run on one of them
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in pythons


# -- requirements.txt ---------------------------------------------------------------------------
def test_requirements_txt_pins_every_install_requires(setup_py):
    pinned = {canonicalize_name(r.name): r for r in requirements_txt()}
    for requirement in setup_py["install_requires"]:
        wanted = Requirement(requirement)
        name = canonicalize_name(wanted.name)
        assert name in pinned, f"{wanted.name} (setup.py install_requires) is missing from requirements.txt"
        (spec,) = pinned[name].specifier
        assert spec.operator == "==", f"requirements.txt should pin {pinned[name]} exactly"
        assert Version(spec.version) in wanted.specifier, (
            f"requirements.txt pins {pinned[name]}, outside setup.py's {requirement}"
        )


def test_requirements_txt_has_nothing_setup_py_does_not_ask_for(setup_py):
    asked = {canonicalize_name(Requirement(r).name) for r in setup_py["install_requires"]}
    extra = [str(r) for r in requirements_txt() if canonicalize_name(r.name) not in asked]
    assert not extra, f"requirements.txt pins packages setup.py does not require: {extra}"
    names = [canonicalize_name(r.name) for r in requirements_txt()]
    assert len(names) == len(set(names)), "a package is pinned twice"


# -- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_installs_the_package_and_ends_with_the_beam_boot_entrypoint(setup_py):
    instructions = dockerfile_instructions()
    last_instruction, last_args = instructions[-1]
    assert last_instruction == "ENTRYPOINT" and json.loads(last_args) == ["/opt/apache/beam/boot"]

    copied = " ".join(args for ins, args in instructions if ins in ("COPY", "ADD") and "--from=" not in args)
    assert re.search(r"(^|\s)setup\.py(\s|$)", copied), "the Dockerfile should copy setup.py"
    # every top-level package setup.py installs must be in the image's build context copy
    top_level = {p.split(".")[0] for p in _packages(setup_py)}
    for package in sorted(top_level):
        assert re.search(rf"(^|\s)\.?/?{package}/?(\s|$)", copied) or re.search(r"(^|\s)\.\s", copied + " "), (
            f"the Dockerfile does not copy the {package} package"
        )
    installs = [args for ins, args in instructions if ins == "RUN" and re.search(r"\bpip\b.*\binstall\b", args)]
    assert any(re.search(r"""install\b.*\s['"]?\.(\[[a-z,]+\])?['"]?(\s|$)""", cmd + " ") for cmd in installs), (
        f"no `pip install .` of the package in the Dockerfile: {installs}"
    )


def test_the_sdk_container_starts_its_workers_with_the_jobs_malloc_arena_limit():
    """DirectRunner's workers get MALLOC_ARENA_MAX from the launcher (pipeline.cli); a container's
    SDK harness from its image, and glibc reads it only at a process's start."""
    from galaxiesml.memory import MALLOC_ARENAS

    env = [args for ins, args in dockerfile_instructions() if ins == "ENV"]
    assert any(re.fullmatch(rf"MALLOC_ARENA_MAX[= ]{MALLOC_ARENAS}", args) for args in env), env


def _packages(setup_py: dict) -> list[str]:
    packages = setup_py.get("packages") or []
    assert packages, "setup.py installs no packages"
    return list(packages)
