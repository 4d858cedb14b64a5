"""The agents image: the sandbox image plus agent CLIs, what `images build --with` runs.

Each agent CLI (Claude Code, Codex, opencode) is an npm package whose real program is a native
linux x64 executable, shipped in a per-platform optional dependency. We install the pinned
package on the host with `npm` (`--ignore-scripts`: the postinstall scripts only copy that
executable over a placeholder, which we do ourselves), into a cache folder, then copy the
executable (Codex: its folder, with the helpers it runs beside it) into an image derived
from the sandbox image, built with no network like the base. No node runs in the image.

A build is skipped when the image carries this recipe's hash (the pinned packages and the
Dockerfile) and was built on the sandbox image that exists now; that check reads labels only,
so it neither runs npm nor reads the cache. Everything here blocks; call it from a worker
thread in async code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .._exceptions import ImageBuildError, ImageNotFound, InvalidArgument
from .._types import AGENTS_IMAGE, DEFAULT_IMAGE
from ._engine import Engine
from ._images import (
    BASE_ID_LABEL,
    CONTENT_HASH_LABEL,
    IMAGE_LABEL,
    _forward,
    content_hash,
    run_streamed,
)

__all__ = [
    "AGENTS_IMAGE",
    "AGENTS_LABEL",
    "AGENT_CLIS",
    "AgentCLI",
    "AgentImageBuild",
    "InstalledAgent",
    "build_agent_image",
    "default_cache_dir",
    "parse_agents",
]

AGENTS_LABEL = "sandbox-sessions.agents"
"""Label holding the image's agents as JSON: `[{name, package, version, command, sha256}]`."""
AGENTS_ROOT = "/opt/sandbox-sessions/agents"
"""Where each agent's files go in the image, one folder per agent, owned by root."""


@dataclass(frozen=True)
class AgentCLI:
    """One agent CLI as npm ships it, pinned to a version we tested offline in the image."""

    name: str
    """Our name for it, as `--with` takes it: `claude-code`, `codex`, `opencode`."""
    package: str
    """The npm package the user would install."""
    version: str
    """The pinned version; its native package has the same version."""
    command: str
    """The command on the image's PATH."""
    native: str
    """The folder, under `node_modules`, holding the linux x64 program and whatever it needs
    beside it: copied whole into the image."""
    program: str
    """The program, relative to `native`."""


AGENT_CLIS: Mapping[str, AgentCLI] = {
    cli.name: cli
    for cli in (
        # A glibc executable (Bun): runs on the image's Debian bookworm.
        AgentCLI("claude-code", "@anthropic-ai/claude-code", "2.1.332", "claude",
                 "@anthropic-ai/claude-code-linux-x64", "claude"),
        # A static musl executable; it finds its helpers (rg, bwrap, code-mode host) beside it.
        AgentCLI("codex", "@openai/codex", "0.171.0", "codex",
                 "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl", "bin/codex"),
        # The baseline build (no AVX2 needed), so the image runs on any x64 machine.
        AgentCLI("opencode", "opencode-ai", "1.18.33", "opencode",
                 "opencode-linux-x64-baseline", "bin/opencode"),
    )
}
"""Every agent CLI `build_agent_image` can install, by name; the versions were tested running
`--version` in a network-none container of the image, as uid 1000."""


class InstalledAgent(BaseModel):
    """One agent CLI in an agents image."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

    name: str
    """`claude-code`, `codex` or `opencode`."""
    package: str
    """The npm package it came from."""
    version: str
    """The package's version."""
    command: str
    """The command on the image's PATH."""
    sha256: str
    """The content hash of the files copied into the image (`content_hash` of its folder)."""


class AgentImageBuild(BaseModel):
    """The outcome of `build_agent_image`."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

    tag: str
    """The image that was built, or found up to date."""
    image_id: str
    """Its id, `sha256:...`."""
    base: str
    """The sandbox image it was built on."""
    base_id: str
    """That image's id, also the image's `sandbox-sessions.base-id`."""
    content_hash: str
    """The recipe's hash (pinned packages and Dockerfile), the `sandbox-sessions.content-hash`."""
    agents: list[InstalledAgent]
    """The agent CLIs in the image, in the order asked."""
    built: bool
    """False when the image was already up to date and nothing was installed or built."""
    seconds: float
    """Wall time of the call, npm included."""


def parse_agents(text: str) -> list[str]:
    """The agent names in a comma list (`claude-code,codex`), checked and without repeats.

    Raises `InvalidArgument` naming any unknown agent and the known ones.
    """
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in AGENT_CLIS]
    if unknown or not names:
        known = ", ".join(AGENT_CLIS)
        what = f"unknown agent {', '.join(map(repr, unknown))}" if unknown else "no agent named"
        raise InvalidArgument(f"{what}: choose among {known}")
    return names


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/sandbox-sessions/agents`, `~/.cache/...` by default: npm installs."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sandbox-sessions" / "agents"


def _dockerfile(clis: Iterable[AgentCLI]) -> str:
    links = " && ".join(
        f"ln -s {AGENTS_ROOT}/{cli.name}/{cli.program} /usr/local/bin/{cli.command}"
        for cli in clis
    )
    return (
        "ARG BASE\n"
        "FROM ${BASE}\n"
        f"COPY agents/ {AGENTS_ROOT}/\n"
        "USER root\n"
        f"RUN {links}\n"
        "USER sandbox\n"
    )


def _recipe_hash(clis: list[AgentCLI]) -> str:
    recipe = {"dockerfile": _dockerfile(clis),
              "agents": [[cli.name, cli.package, cli.version, cli.native, cli.program]
                         for cli in clis]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def build_agent_image(
    engine: Engine,
    *,
    agents: Iterable[str],
    tag: str = AGENTS_IMAGE,
    base: str = DEFAULT_IMAGE,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> AgentImageBuild:
    """Build `tag` from the sandbox image `base` with the named agent CLIs, offline.

    The image holds exactly `agents` (names of `AGENT_CLIS`): asking for others builds it
    again. It is up to date when it carries this recipe's hash and was built on the `base`
    that exists now; then nothing runs but two image lookups. `force` builds anyway. Each
    package is installed with `npm` into `cache_dir` (`default_cache_dir()`) once per
    version; only that step needs a registry. The image build itself has no network.

    `progress` receives npm's output, the copying steps and the builder's output, one line
    per call, in order. Raises `InvalidArgument` for an unknown agent, `ImageNotFound` when
    `base` does not exist (build it with `build_image`), `ImageBuildError` when npm or the
    build fails, and `SandboxUnavailable` when the engine does not answer.
    """
    started = time.monotonic()
    clis = [AGENT_CLIS[name] for name in parse_agents(",".join(agents))]
    digest = _recipe_hash(clis)
    base_id = engine.image_id(base)
    if base_id is None:
        raise ImageNotFound(f"image {base!r} does not exist locally; "
                            "build it with `sandbox-sessions images build`")
    labels = engine.image_labels(tag)
    if not force and labels is not None and _current(labels, digest, base_id):
        progress(f"{tag} is up to date ({digest[:12]})")
        return _result(engine, tag, base, labels, built=False, started=started)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    installs = [_install(cli, folder, progress) for cli in clis]
    labels = _build(engine, clis, installs, tag=tag, base=base, base_id=base_id,
                    digest=digest, folder=folder, progress=progress)
    return _result(engine, tag, base, labels, built=True, started=started)


def _current(labels: Mapping[str, str], digest: str, base_id: str) -> bool:
    return labels.get(CONTENT_HASH_LABEL) == digest and labels.get(BASE_ID_LABEL) == base_id


def _result(engine: Engine, tag: str, base: str, labels: Mapping[str, str], *, built: bool,
            started: float) -> AgentImageBuild:
    image_id = engine.image_id(tag)
    if image_id is None:
        raise ImageBuildError(f"the build ended but {tag} does not exist")
    agents = [InstalledAgent.model_validate(item) for item in json.loads(labels[AGENTS_LABEL])]
    return AgentImageBuild(
        tag=tag, image_id=image_id, base=base, base_id=labels[BASE_ID_LABEL],
        content_hash=labels[CONTENT_HASH_LABEL], agents=agents, built=built,
        seconds=time.monotonic() - started)


def _install(cli: AgentCLI, cache: Path, progress: Callable[[str], None]) -> Path:
    """The folder of `cli`'s native files, installing the package with npm unless cached."""
    prefix = cache / cli.name / cli.version
    native = prefix / "node_modules" / cli.native
    if (native / cli.program).is_file():
        progress(f"{cli.package}@{cli.version} is in the cache ({prefix})")
        return native
    if prefix.exists():  # incomplete: its program was removed since
        shutil.rmtree(prefix, ignore_errors=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # Into a fresh folder, renamed when complete: an interrupted or concurrent install
    # never leaves a half-filled cache entry that a later build would trust.
    staging = Path(tempfile.mkdtemp(prefix=f".{cli.version}-", dir=prefix.parent))
    try:
        progress(f"npm install {cli.package}@{cli.version}")
        _npm_install(cli, staging, progress)
        if not (staging / "node_modules" / cli.native / cli.program).is_file():
            raise ImageBuildError(
                f"npm installed {cli.package}@{cli.version} without its linux x64 program "
                f"({cli.native}/{cli.program}); is the optional dependency omitted?")
        try:
            staging.rename(prefix)
        except OSError as exc:
            if not (native / cli.program).is_file():  # else another build got there first
                raise ImageBuildError(f"cannot keep {cli.package} in {prefix}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return native


def _npm_install(cli: AgentCLI, prefix: Path, progress: Callable[[str], None]) -> None:
    """`npm install` the pinned package into `prefix`, streaming its output to `progress`."""
    npm = shutil.which("npm")
    if npm is None:
        raise ImageBuildError("`npm` is needed to install the agent CLIs and is not on PATH")
    argv = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
            "--ignore-scripts", "--no-save", "--no-package-lock", "--loglevel=http",
            # the image's platform, whatever the host's: the native package it needs
            "--os=linux", "--cpu=x64", "--libc=glibc", f"{cli.package}@{cli.version}"]
    run_streamed(argv, progress, what=f"npm install {cli.package}@{cli.version}")


def _build(engine: Engine, clis: list[AgentCLI], installs: list[Path], *, tag: str,
           base: str, base_id: str, digest: str, folder: Path,
           progress: Callable[[str], None]) -> dict[str, str]:
    """Stage the context beside the cache (so files are hard links, not copies), build."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".context-", dir=folder) as context:
        root = Path(context)
        agents = []
        for cli, native in zip(clis, installs, strict=True):
            progress(f"copying {cli.command} ({cli.package}@{cli.version}) into the context")
            target = root / "agents" / cli.name
            shutil.copytree(native, target, symlinks=True, copy_function=_link_or_copy)
            agents.append(InstalledAgent(name=cli.name, package=cli.package,
                                         version=cli.version, command=cli.command,
                                         sha256=content_hash(target)))
        (root / "Dockerfile").write_text(_dockerfile(clis))
        labels = {IMAGE_LABEL: "agents", CONTENT_HASH_LABEL: digest, BASE_ID_LABEL: base_id,
                  AGENTS_LABEL: json.dumps([agent.model_dump() for agent in agents])}
        progress(f"building {tag} on {base}")
        _forward(engine.build(str(root), tag=tag, labels=labels, buildargs={"BASE": base}),
                 progress)
    return labels


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links refused: a copy does as well
        shutil.copy2(source, destination)
