"""Command templates: prompts kept as Markdown files (or registered in code) and run by name.

A template is found, in this order of precedence (a later one hides an earlier one of the
same name):

1. `$XDG_CONFIG_HOME/sandbox-sessions/commands/` (default `~/.config/...`), the user's own;
2. `<cwd>/.sandbox-sessions/commands/`, the project's;
3. `client.add_command()`, in code.

A file's name, without `.md` and with its folders, is the command's name (`team/review.md`
is `team/review`). The file may start with YAML frontmatter between `---` lines: `description`,
`agent`, `model`, `subtask`. The folders are read at each lookup, so an edited file counts
at once. A file is read only if it is a regular file of at most `MAX_TEMPLATE_BYTES`, in
UTF-8. In the project's folder links are refused, files and folders alike (a cloned
repository could link a command to a secret of the host, which would then go to the model);
in the user's own folder they are followed (dotfile managers put links there).

Rendering is one pass over the template, so nothing that a substitution brings in (an
argument, a command's output, a file) is itself read as a placeholder:

- `$ARGUMENTS`: the arguments as given; `$1` ... `$9`: the positional ones (a string is split
  as a shell would, a missing one is empty); `$name` (lowercase: `[a-z_][a-z0-9_]*`): a key of
  a dict of arguments, and one that is missing is an `InvalidArgument`. Upper-case names other
  than `ARGUMENTS` (`$HOME`) are left alone, and `$$` is a literal `$`.
- `` !`cmd` ``: run in the session's sandbox, replaced by its standard output (its final
  newline dropped). The arguments inside it are substituted as quoted shell words, so an
  argument cannot inject a command. A command that fails or times out raises `CommandFailed`.
- `@path`, at the start of a word: the sandbox file's text, fenced and headed by its path
  (arguments in the path are filled in: `@$1`); `@@` is a literal `@`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import stat
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from .._exceptions import CommandFailed, CommandNotFound, InvalidArgument
from .._types import CommandArguments, CommandTemplate, ShellResult
from .._validation import check_text

__all__ = [
    "COMMAND_TIMEOUT",
    "MAX_TEMPLATE_BYTES",
    "CommandRegistry",
    "command_dirs",
    "parse_template",
    "render",
]

log = logging.getLogger("sandbox_sessions.commands")

MAX_TEMPLATE_BYTES = 256 * 1024
"""Largest template file read (256 KiB); a larger one is an error, not a truncated prompt."""
MAX_INLINED_FILE = 1024 * 1024
"""Largest sandbox file an `@path` inlines (1 MiB)."""
COMMAND_TIMEOUT = 120.0
"""Seconds a `` !`cmd` `` may run by default."""
MAX_DEPTH = 8
"""Folders below a commands folder that are searched."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_PLACEHOLDER = re.compile(
    r"\$\$|\$ARGUMENTS\b|\$([1-9])|\$([a-z_][a-z0-9_]*)|!`([^`\n]*)`|@@|(?<!\S)@([^\s`]+)")
_ARGUMENT = re.compile(r"\$\$|\$ARGUMENTS\b|\$([1-9])|\$([a-z_][a-z0-9_]*)")
_TRAILING = ".,;:!?)]}'\""
"""Punctuation that ends a sentence after `@path`, not part of the path."""
_KEYS = {"description": str, "agent": str, "model": str, "subtask": bool}

Shell = Callable[[str, float], Awaitable[ShellResult]]
ReadText = Callable[[str, int], Awaitable[str]]


def command_dirs(cwd: Path | None = None) -> list[tuple[Path, bool]]:
    """The folders searched for template files, lowest precedence first, each with whether
    links are followed in it: in the user's own folder yes (dotfile managers link files
    there), in the project's no (it may be a repository cloned from anyone)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    project = (cwd or Path.cwd()) / ".sandbox-sessions" / "commands"
    return [(Path(config) / "sandbox-sessions" / "commands", True), (project, False)]


def check_name(name: object) -> str:
    """A command's name: words of letters, digits, `.`, `_`, `-`, joined by `/`."""
    text = check_text(name, "command name", empty=False)
    if not _NAME.fullmatch(text) or ".." in text.split("/"):
        raise InvalidArgument(f"command name {text[:80]!r} must be words of letters, digits, "
                              "'.', '_' or '-' joined by '/'")
    return text


def parse_template(name: str, text: str, *, source: str | None = None) -> CommandTemplate:
    """A template from a file's text: optional YAML frontmatter, then the body."""
    where = source or name
    check_text(text, f"template {where}")
    body, meta = text, {}
    lines = text.splitlines(keepends=True)
    if lines and lines[0].rstrip("\r\n") == "---":
        end = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip("\r\n") == "---"),
                   None)
        if end is None:
            raise InvalidArgument(f"template {where}: its frontmatter has no closing '---'")
        try:
            loaded = yaml.safe_load("".join(lines[1:end]))
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"template {where}: its frontmatter is not YAML: "
                                  f"{str(exc)[:200]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidArgument(f"template {where}: its frontmatter must be a mapping")
        meta = loaded or {}
        body = "".join(lines[end + 1:])
    fields: dict[str, object] = {}
    for key, kind in _KEYS.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise InvalidArgument(f"template {where}: {key} must be a {kind.__name__}")
        fields[key] = value
    ignored = sorted(str(key)[:40] for key in meta if key not in _KEYS)
    if ignored:
        log.debug("template %s: ignoring frontmatter keys %s", where, ignored)
    return CommandTemplate(name=name, template=body, source=source, **fields)


def _read_file(path: Path, *, follow: bool = False) -> str:
    """The text of a template file: a regular file (a link only if `follow`) within the cap."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"template {path}: a link, not read (a template must be a "
                                  "regular file)") from None
        raise InvalidArgument(f"template {path}: cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"template {path}: not a regular file")
        data = file.read(MAX_TEMPLATE_BYTES + 1)
    if len(data) > MAX_TEMPLATE_BYTES:
        raise InvalidArgument(f"template {path}: over {MAX_TEMPLATE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"template {path}: not UTF-8 text") from None


def _files(folder: Path, *, follow: bool) -> Iterator[tuple[str, Path]]:
    """Each `*.md` below `folder` with the command name it gives (a link too, which
    `_read_file` refuses unless `follow`); folders that are links are entered only if
    `follow` (the folder itself and its parent included)."""
    if not folder.is_dir() or (not follow and (folder.is_symlink()
                                                or folder.parent.is_symlink())):
        return
    for root, dirs, files in os.walk(folder, followlinks=follow):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if depth < MAX_DEPTH
                         and (follow or not (Path(root) / d).is_symlink()))
        for file in sorted(files):
            path = Path(root) / file
            if not file.endswith(".md"):
                continue
            name = path.relative_to(folder).with_suffix("").as_posix()
            if _NAME.fullmatch(name):
                yield name, path
            else:
                log.warning("skipping template %s: %r is not a command name", path, name)


class CommandRegistry:
    """The templates a client knows: those registered in code, over those in the folders."""

    def __init__(self) -> None:
        self._registered: dict[str, CommandTemplate] = {}

    def add(self, template: CommandTemplate) -> None:
        self._registered[check_name(template.name)] = template

    def _found(self, cwd: Path | None) -> dict[str, tuple[Path, bool]]:
        found: dict[str, tuple[Path, bool]] = {}
        for folder, follow in command_dirs(cwd):
            found.update((name, (path, follow)) for name, path in _files(folder, follow=follow))
        return found

    def list(self, *, cwd: Path | None = None) -> list[CommandTemplate]:
        """Every template, by name. A file that cannot be read or parsed is left out, with a
        warning on the log (running it by name says why)."""
        templates: dict[str, CommandTemplate] = {}
        for name, (path, follow) in self._found(cwd).items():
            if name in self._registered:
                continue
            try:
                templates[name] = parse_template(name, _read_file(path, follow=follow),
                                                 source=str(path))
            except InvalidArgument as exc:
                log.warning("skipping %s", exc)
        templates.update(self._registered)
        return [templates[name] for name in sorted(templates)]

    def get(self, name: str, *, cwd: Path | None = None) -> CommandTemplate:
        """The template named so; `CommandNotFound` when there is none, `InvalidArgument`
        when its file is not a valid template."""
        check_name(name)
        if name in self._registered:
            return self._registered[name]
        found = self._found(cwd).get(name)
        if found is None:
            raise CommandNotFound(name)
        path, follow = found
        return parse_template(name, _read_file(path, follow=follow), source=str(path))


class _Arguments:
    """What the placeholders stand for, as text and as quoted shell words."""

    def __init__(self, arguments: CommandArguments) -> None:
        self.positional: list[str] = []
        self.named: dict[str, str] = {}
        if arguments is None:
            self.whole = self.words = ""
        elif isinstance(arguments, str):
            self.whole = check_text(arguments, "arguments")
            try:
                self.positional = shlex.split(arguments)
            except ValueError as exc:
                raise InvalidArgument(f"arguments cannot be split into words: {exc}") from None
            self.words = shlex.join(self.positional)
        elif isinstance(arguments, Mapping):
            self.named = {check_text(k, "argument name"): check_text(v, f"argument {k}")
                          for k, v in arguments.items()}
            self.whole = self.words = shlex.join(f"{k}={v}" for k, v in self.named.items())
        elif isinstance(arguments, Sequence):
            self.positional = [check_text(word, "argument") for word in arguments]
            self.whole = self.words = shlex.join(self.positional)
        else:
            raise InvalidArgument("arguments must be a str, a list of str or a dict of str")

    def substitute(self, match: re.Match[str], *, quoted: bool) -> str:
        """The text for an `_ARGUMENT` match; quoted shell words inside a command."""
        text = match.group(0)
        if text == "$$":
            return "$"
        if text == "$ARGUMENTS":
            return self.words if quoted else self.whole
        if match.group(1) is not None:
            index = int(match.group(1)) - 1
            value = self.positional[index] if index < len(self.positional) else ""
        else:
            key = match.group(2)
            if key not in self.named:
                raise InvalidArgument(f"the template needs the argument {key!r}")
            value = self.named[key]
        return shlex.quote(value) if quoted else value


def _missing(template: str, named: Mapping[str, str]) -> list[str]:
    """The lowercase names the template uses that `named` lacks (outside `!`...``, too)."""
    return sorted({m.group(2) for m in _ARGUMENT.finditer(template)
                   if m.group(2) is not None and m.group(2) not in named})


async def render(template: CommandTemplate, arguments: CommandArguments, *, shell: Shell,
                 read_text: ReadText, timeout: float = COMMAND_TIMEOUT) -> str:
    """The prompt the template makes with these arguments (see the module's docstring)."""
    given = _Arguments(arguments)
    missing = _missing(template.template, given.named)
    if missing:  # all of them at once, before any command runs
        raise InvalidArgument(f"command {template.name!r} needs the argument(s) "
                              f"{', '.join(missing)}: pass run_command(name, {{...}})")
    out: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template.template):
        out.append(template.template[position:match.start()])
        position = match.end()
        text = match.group(0)
        if match.group(3) is not None:  # !`cmd`
            command = _ARGUMENT.sub(lambda m: given.substitute(m, quoted=True), match.group(3))
            out.append(await _run(template.name, command, shell, timeout))
        elif text == "@@":
            out.append("@")
        elif match.group(4) is not None:  # @path, whose arguments are filled in (@$1)
            written = match.group(4).rstrip(_TRAILING)
            tail = match.group(4)[len(written):]
            if not written:
                out.append(text)
                continue
            path = _ARGUMENT.sub(lambda m: given.substitute(m, quoted=False), written)
            if not path:
                raise InvalidArgument(f"command {template.name!r}: @{written} names no file "
                                      "with these arguments")
            content = await read_text(path, MAX_INLINED_FILE)
            fence = "```"
            while fence in content:
                fence += "`"
            out.append(f"{path}:\n{fence}\n{content.rstrip(chr(10))}\n{fence}\n{tail}")
        else:
            out.append(given.substitute(match, quoted=False))
    out.append(template.template[position:])
    return "".join(out)


async def _run(name: str, command: str, shell: Shell, timeout: float) -> str:
    result = await shell(command, timeout)
    if result.timed_out or result.exit_code != 0:
        how = (f"timed out after {timeout:g} s" if result.timed_out
               else f"exited with code {result.exit_code}")
        tail = result.stderr.strip()[-500:]
        raise CommandFailed(name, f"!`{command[:200]}` {how}" + (f": {tail}" if tail else ""))
    return result.stdout.removesuffix("\n")
