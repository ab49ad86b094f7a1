"""The README's commands, and those of the pages it links to, work as written after
`make demo`: the tools they name are in the venv `make demo` makes, the venv is activated on
each page before the first of them, and uploading the samples folder uploads photos only."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The pages the README's commands moved to, and the other pages that show commands.
PAGES = {name: (ROOT / name).read_text(encoding="utf-8") for name in (
    "imgpipe/local/README.md", "docs/deploy.md", "model/README.md", "bench/README.md",
    "CONTRIBUTING.md")}
ACTIVATE = "source .venv/bin/activate"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, in order, continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.strip())
    return lines


def test_make_demo_installs_the_aws_cli_and_imgpipe() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    local = project["optional-dependencies"]["local"]
    assert any(re.match(r"awscli\b", dep) for dep in local), local
    assert project["scripts"]["imgpipe"] == "imgpipe.cli:main"
    demo = re.search(r"^demo: (.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert demo and "installed-local" in demo.group(1)


def _assert_activated_first(lines: list[str], page: str) -> None:
    commands = [i for i, line in enumerate(lines) if re.match(r"(imgpipe|aws|python3?) ", line)]
    assert commands, f"{page} shows commands"
    assert ACTIVATE in lines, page
    assert lines.index(ACTIVATE) < commands[0], (page, lines[commands[0]])
    assert not [line for line in lines if line.startswith(".venv/bin/")], page


def test_the_venv_is_activated_before_the_first_bare_command() -> None:
    _assert_activated_first(code_lines(README[README.index("## Try it"):]),  # after the diagram
                            "README.md")


def test_each_page_with_commands_activates_the_venv_before_the_first() -> None:
    """A reader who lands on a page from a link has not read the README's activation line."""
    for page, text in PAGES.items():
        _assert_activated_first(code_lines(text), page)


def _uploaded(command: str, folder: Path) -> list[str]:
    """The files `aws s3 cp FOLDER/ DEST --recursive [--exclude P] [--include P]` sends:
    every filter is matched against the file's path joined to the source folder, and the
    last filter that matches decides (the aws CLI's rules)."""
    args = shlex.split(command)
    source = args[3]
    filters = [(args[i], args[i + 1]) for i in range(len(args) - 1)
               if args[i] in ("--exclude", "--include")]
    sent = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = os.path.join(source, str(path.relative_to(folder)))
        keep = True
        for flag, pattern in filters:
            if fnmatch.fnmatch(name, os.path.join(source, pattern)):
                keep = flag == "--include"
        if keep:
            sent.append(name)
    return sent


def test_uploading_the_samples_folder_sends_photos_only() -> None:
    """`aws s3 cp samples/ ... --recursive` used to send README.md and make_samples.py too:
    two surprising rejected records for a new user."""
    banner = (ROOT / "imgpipe" / "commands" / "local.py").read_text(encoding="utf-8")
    banner_cmds = [" ".join(m.split()) for m in re.findall(
        r"(aws s3 cp samples/ .*?--recursive.*?)'\n", banner.replace("\\\\\n", " "))]
    readme_cmds = [line.split("#")[0] for line in code_lines(README)
                   if line.startswith("aws s3 cp samples/ ") and "--recursive" in line]
    page_cmds = [line.split("#")[0] for text in PAGES.values() for line in code_lines(text)
                 if line.startswith("aws s3 cp samples/ ") and "--recursive" in line]
    assert len(readme_cmds) >= 3 and page_cmds and banner_cmds
    samples = ROOT / "samples"
    assert (samples / "README.md").exists() and (samples / "make_samples.py").exists()
    for command in [*readme_cmds, *page_cmds, *(c + "'" for c in banner_cmds)]:
        sent = _uploaded(command.replace("{r.bucket}/{r.input_prefix}", "b/in/"), samples)
        assert sent, command
        assert all(s.lower().endswith(IMAGE_SUFFIXES) for s in sent), (command, sent)
        assert len(sent) == len([p for p in samples.iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES]), command


def test_the_deploy_page_reads_the_outputs_as_the_readme_does() -> None:
    """docs/deploy.md repeats the README's `out` for a reader who lands there; the two stay
    one definition (tests/e2e/test_local_aws_cli.py runs the README's)."""
    def out(text: str) -> str:
        found = re.search(r"^out\(\) \{.*?\}", text, flags=re.S | re.M)
        assert found, "no out() { ... } block"
        return found.group(0)
    assert out(PAGES["docs/deploy.md"]) == out(README)
