"""The Dockerfile as the builder sees it: stages with their inherited ENV, USER, EXPOSE, STOPSIGNAL, ENTRYPOINT and
CMD, parsed by the ``dockerfile`` package (BuildKit's own Go parser), so a syntax error here is one for Docker too.

No Docker engine runs on our machines, so the tests read the image's contract from this model instead of from a
built image: what the entrypoint runs and with which environment, which user, which ports, which stop signal.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

INSTRUCTIONS_INHERITED = ("ENV", "USER", "EXPOSE", "STOPSIGNAL", "ENTRYPOINT", "CMD", "WORKDIR")


@dataclass
class Stage:
    name: str
    base: str  # the FROM argument: an image or an earlier stage's name
    commands: list[dockerfile.Command] = field(default_factory=list)
    parent: Stage | None = None  # the earlier stage it builds on, if any

    def chain(self) -> list[Stage]:
        """This stage and its ancestors, oldest first."""
        return ([*self.parent.chain()] if self.parent else []) + [self]

    def own(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]

    def all(self, instruction: str) -> list[dockerfile.Command]:
        """``instruction`` in this stage and the stages it inherits from."""
        return [c for stage in self.chain() for c in stage.own(instruction)]

    @property
    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
                values[key] = _unquote(raw)
        return values

    def last(self, instruction: str) -> dockerfile.Command | None:
        found = self.all(instruction)
        return found[-1] if found else None

    @property
    def user(self) -> str:
        command = self.last("USER")
        return command.value[0] if command else "root"

    @property
    def exposed(self) -> set[int]:
        return {int(v.split("/")[0]) for c in self.all("EXPOSE") for v in c.value}

    @property
    def stopsignal(self) -> str:
        command = self.last("STOPSIGNAL")
        return command.value[0] if command else "SIGTERM"

    def exec_form(self, instruction: str) -> list[str]:
        command = self.last(instruction)
        if command is None:
            return []
        if not command.json:
            raise AssertionError(f"{instruction} must use the exec (JSON) form so that signals reach the server")
        return list(command.value)

    @property
    def root_image(self) -> str:
        return self.chain()[0].base


@dataclass
class DockerfileModel:
    path: Path
    args: dict[str, str]  # ARGs declared before the first FROM, with their defaults
    stages: dict[str, Stage]

    @property
    def default_target(self) -> Stage:
        return list(self.stages.values())[-1]


def _unquote(value: str) -> str:
    return shlex.split(value)[0] if value[:1] in "\"'" else value


def parse(path: Path) -> DockerfileModel:
    commands = dockerfile.parse_file(str(path))
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in commands:
        if command.cmd == "FROM":
            value = command.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else f"stage{len(stages)}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value[0])
            current = Stage(name, base, parent=stages.get(base))
            stages[name] = current
        elif current is None:
            if command.cmd == "ARG":
                key, _, default = command.value[0].partition("=")
                args[key] = _unquote(default) if default else ""
        else:
            current.commands.append(command)
    return DockerfileModel(path, args, stages)


def context_copies(stage: Stage) -> list[tuple[str, str]]:
    """(source, destination) of the COPY instructions that read the build context (not another stage)."""
    pairs = []
    for command in stage.own("COPY"):
        if any(flag.startswith("--from=") for flag in command.flags):
            continue
        *sources, destination = command.value
        pairs += [(source, destination) for source in sources]
    return pairs


def ignore_patterns(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (without ``!`` exceptions) as a regex on slash-separated relative paths."""
    out, i = [], 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")  # a matched folder excludes what is below it


def ignored(relative: str, patterns: list[str]) -> bool:
    return any(_pattern_regex(p).fullmatch(relative) for p in patterns)


def copy_context(root: Path, stage: Stage, patterns: list[str], dest: Path) -> list[Path]:
    """Reproduce the stage's context COPYs with relative destinations (relative to its WORKDIR, which ``dest``
    stands for), leaving out what the .dockerignore excludes, as the builder would; the files copied."""
    copied = []
    for source, destination in context_copies(stage):
        if destination.startswith("/"):
            continue  # build inputs outside the WORKDIR (the locks): the tests read those from the repository
        into_folder = destination.endswith("/") or destination in (".", "./")
        base = dest / destination.removeprefix("./")
        for path in sorted(root.glob(source.rstrip("/"))):
            if path.is_dir():  # COPY dir/ dest/: the folder's contents go into dest/
                pairs = [(f, base / f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file()]
            else:
                pairs = [(path, base / path.name if into_folder else base)]
            for file, target in pairs:
                if ignored(file.relative_to(root).as_posix(), patterns):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
                copied.append(target)
    return copied
