"""One source of truth for dependency versions: requirements-lambda.txt is generated from
pyproject.toml (`make lock`), and these tests fail when the two drift apart."""

from __future__ import annotations

from packaging.requirements import Requirement

from tools.lambda_deps import (
    Lock,
    Pin,
    canonical,
    parse_lock,
    pip_target_args,
    project_dependencies,
    read_lock,
)

RERUN = "pyproject.toml and requirements-lambda.txt disagree: run `make lock` and commit both"


def test_lock_was_generated_from_the_current_dependencies() -> None:
    assert list(read_lock().source) == project_dependencies(), RERUN


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = {canonical(p.name): p for p in read_lock().pins}
    for line in project_dependencies():
        req = Requirement(line)
        pin = pins.get(canonical(req.name))
        assert pin is not None, f"{req.name} is not in requirements-lambda.txt; {RERUN}"
        assert req.specifier.contains(pin.version, prereleases=True), \
            f"{req.name}=={pin.version} is outside {req.specifier}; {RERUN}"
    assert "aws-xray-sdk" in pins  # the extra of aws-lambda-powertools[tracer]


def test_every_pin_is_exact_and_hashed() -> None:
    lock = read_lock()
    assert lock.pins
    for pin in lock.pins:
        assert pin.version and pin.hashes, pin
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in pin.hashes), pin
    # native wheels differ per architecture: one hash each
    native = {canonical(p.name): len(p.hashes) for p in lock.pins}
    assert native["onnxruntime"] == native["numpy"] == native["pillow"] == 2


def test_lock_file_round_trips() -> None:
    lock = Lock(("a>=1", "b[x]>=2"), (Pin("a", "1.0", ("0" * 64,)),
                                      Pin("b", "2.1", ("1" * 64, "2" * 64))))
    assert parse_lock(lock.render()) == lock


def test_wheels_are_chosen_for_amazon_linux_2023() -> None:
    args = pip_target_args("arm64")
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert "manylinux_2_34_aarch64" in platforms  # AL2023's glibc
    assert "manylinux_2_28_aarch64" in platforms  # what onnxruntime ships
    assert "manylinux2014_aarch64" in platforms
    assert not any("2_35" in p or "x86_64" in p for p in platforms)
    assert "--only-binary=:all:" in args and args[args.index("--abi") + 1] == "cp312"
