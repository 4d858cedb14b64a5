"""The file tools: read, write, edit, list, glob and grep.

Paths are taken from the session's workdir when relative. The rules judge the absolute,
normalized path the call names (for list, glob and grep: the folder searched) and that path
with its links resolved in the container; the tool then works on the resolved path. Walking a
folder (glob's walk, grep's `rg` or `grep -r`) does not follow the links found inside it.
"""

from __future__ import annotations

import difflib
import posixpath
import re
import shlex

from pydantic import Field

from ..sandbox.base import ShellRequest
from ._tool_support import PathTool, Target, ToolInput, file_errors, file_mode, read_text
from .base import ToolContext, ToolError, ToolOutput

__all__ = ["EditTool", "GlobTool", "GrepTool", "ListTool", "ReadTool", "WriteTool"]

READ_LINES = 2000
"""Lines `read` returns when no `limit` is given."""
MAX_LINE_CHARS = 2000
"""Longer lines are cut in `read` and `grep` output, so one minified file cannot flood it."""
MAX_READ_OUTPUT = 256 * 1024
"""Characters of numbered lines one `read` returns at most."""
MAX_ENTRIES = 1000
"""Entries `list` and paths `glob` return at most."""
MAX_GREP_OUTPUT = 128 * 1024
"""Bytes of match lines `grep` keeps."""


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + f"... [line cut: {len(line)} characters]"


class _ReadInput(ToolInput):
    path: str = Field(description="The file to read, absolute or relative to the workdir.")
    offset: int = Field(default=1, ge=1, description="The first line to read (1-based).")
    limit: int = Field(default=READ_LINES, ge=1, description="How many lines to read.")


class ReadTool(PathTool[_ReadInput]):
    """`read`: a text file's lines, numbered like `cat -n`, from `offset` for `limit` lines."""

    name = "read"
    description = (
        "Read a UTF-8 text file. Lines come numbered like `cat -n` (number, tab, text); the "
        f"numbers are not part of the file. Reads {READ_LINES} lines from the start unless "
        "offset (1-based) and limit are given. Binary files are refused."
    )
    input_model = _ReadInput

    async def act(self, args: _ReadInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Number the asked lines; `ToolError` for a missing or binary file or a bad offset."""
        path = target.real
        lines = (await read_text(ctx, path)).split("\n")
        if lines[-1] == "":
            lines.pop()  # the final newline ends the last line; it does not start another
        if not lines:
            return ToolOutput(output="(empty file)", title=path,
                              metadata={"path": path, "lines": 0, "total_lines": 0})
        if args.offset > len(lines):
            raise ToolError(f"offset {args.offset} is past the end of {path} "
                            f"({len(lines)} lines)")
        end = min(len(lines), args.offset - 1 + args.limit)
        shown: list[str] = []
        size = 0
        for number in range(args.offset, end + 1):
            row = f"{number:>6}\t{_cut(lines[number - 1])}"
            if size + len(row) > MAX_READ_OUTPUT and shown:
                end = number - 1
                break
            shown.append(row)
            size += len(row) + 1
        if end < len(lines):
            shown.append(f"\n({len(lines) - end} more lines; read on with offset={end + 1})")
        metadata = {"path": path, "lines": end - args.offset + 1, "total_lines": len(lines)}
        return ToolOutput(output="\n".join(shown), title=path, metadata=metadata)


class _WriteInput(ToolInput):
    path: str = Field(description="The file to write, absolute or relative to the workdir.")
    content: str = Field(description="The file's whole new content.")


class WriteTool(PathTool[_WriteInput]):
    """`write`: replace a file's content (or create it, with its folders), atomically."""

    name = "write"
    description = (
        "Write a UTF-8 text file, replacing it whole if it exists and creating missing parent "
        "folders. To change part of an existing file, prefer edit."
    )
    input_model = _WriteInput

    async def act(self, args: _WriteInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Write the content; an existing file keeps its permission bits."""
        path = target.real
        data = args.content.encode("utf-8")
        mode = await file_mode(ctx, path)
        with file_errors():
            await ctx.sandbox.write_file(path, data, mode=mode)
        return ToolOutput(output=f"wrote {len(data)} bytes to {path}", title=path,
                          metadata={"path": path, "bytes": len(data), "created": mode is None})


class _EditInput(ToolInput):
    path: str = Field(description="The file to edit, absolute or relative to the workdir.")
    old_string: str = Field(description="The exact text to replace, whitespace included.")
    new_string: str = Field(description="The text to put in its place.")
    replace_all: bool = Field(default=False, description="Replace every occurrence.")


class EditTool(PathTool[_EditInput]):
    """`edit`: replace an exact string in a file, which must occur once unless `replace_all`."""

    name = "edit"
    description = (
        "Replace old_string with new_string in a text file. old_string must match the file "
        "exactly (indentation included, no line numbers) and occur exactly once, unless "
        "replace_all is true. Add surrounding lines to make it unique."
    )
    input_model = _EditInput

    async def act(self, args: _EditInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Make the replacement; the metadata carries a unified diff of the change."""
        path = target.real
        if not args.old_string:
            raise ToolError("old_string is empty; to create or overwrite a file, use write")
        if args.old_string == args.new_string:
            raise ToolError("old_string and new_string are the same; nothing would change")
        before = await read_text(ctx, path)
        count = before.count(args.old_string)
        if count == 0:
            raise ToolError(f"old_string not found in {path}")
        if count > 1 and not args.replace_all:
            raise ToolError(
                f"old_string found {count} times in {path}; add surrounding context to make it "
                "unique, or set replace_all to replace every occurrence"
            )
        after = before.replace(args.old_string, args.new_string, -1 if args.replace_all else 1)
        mode = await file_mode(ctx, path)
        with file_errors():
            await ctx.sandbox.write_file(path, after.encode("utf-8"), mode=mode)
        replaced = count if args.replace_all else 1
        diff = "".join(difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            fromfile=path, tofile=path))
        return ToolOutput(output=f"replaced {replaced} occurrence(s) in {path}", title=path,
                          metadata={"path": path, "replacements": replaced, "diff": diff})


class _ListInput(ToolInput):
    path: str = Field(default=".", description="The folder to list; the workdir by default.")


class ListTool(PathTool[_ListInput]):
    """`list`: one level of a folder, hidden entries included, folders marked with `/`."""

    name = "list"
    description = (
        "List the entries of one folder (not recursive), sorted, hidden ones included; "
        f"folders end with '/'. At most {MAX_ENTRIES} entries."
    )
    input_model = _ListInput

    async def act(self, args: _ListInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Run `ls -1Ap` in the sandbox and cap what comes back."""
        path = target.real
        quoted = shlex.quote(path)
        # Checked first: behind `| head`, a failing `ls` would look like an empty folder.
        command = (f"if [ ! -d {quoted} ]; then echo 'not a folder' >&2; exit 2; fi\n"
                   f"if [ ! -r {quoted} ] || [ ! -x {quoted} ]; then\n"
                   "  echo 'permission denied' >&2; exit 2\nfi\n"
                   f"ls -1Ap -- {quoted} | head -n {MAX_ENTRIES + 1}")
        result = await ctx.sandbox.shell(ShellRequest(
            command=command, timeout=ctx.timeout, cwd="/", env={"LC_ALL": "C"}))
        if not result.ok:
            raise ToolError(f"cannot list {path}: {result.stderr.strip() or result.exit_code}")
        entries = sorted(line for line in result.stdout.split("\n") if line)
        more = len(entries) > MAX_ENTRIES
        lines = entries[:MAX_ENTRIES] or ["(empty folder)"]
        if more:
            lines.append(f"(more than {MAX_ENTRIES} entries; showing the first {MAX_ENTRIES})")
        return ToolOutput(output="\n".join(lines), title=path,
                          metadata={"path": path, "count": min(len(entries), MAX_ENTRIES),
                                    "truncated": more})


def _expand_braces(pattern: str, budget: int = 64) -> list[str]:
    """Shell-style `{a,b}` expansion (nested too); a pattern past `budget` results stays as is."""
    depth = start = 0
    for index, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                return _expand_group(pattern, start, index, budget)
    return [pattern]


def _expand_group(pattern: str, start: int, end: int, budget: int) -> list[str]:
    """Expand the group `pattern[start:end + 1]`, then whatever groups follow it."""
    inner, options, depth, last = pattern[start + 1:end], [], 0, 0
    for index, char in enumerate(inner):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            options.append(inner[last:index])
            last = index + 1
    options.append(inner[last:])
    head, tail = pattern[:start], pattern[end + 1:]
    if len(options) == 1:  # "{x}" is no group, as in bash: keep it, expand what follows
        return [head + "{" + inner + "}" + rest for rest in _expand_braces(tail, budget)]
    results = [r for option in options for r in _expand_braces(head + option + tail, budget)]
    return results if len(results) <= budget else [pattern]


def _segment_regex(segment: str) -> str:
    out, index = [], 0
    while index < len(segment):
        char = segment[index]
        close = segment.find("]", index + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif close != -1:
            body = segment[index + 1:close]
            negate = body[:1] in ("!", "^")
            chars = "".join(c if c == "-" else re.escape(c) for c in body[int(negate):])
            out.append("[" + ("^" if negate else "") + chars + "]")
            index = close
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob: `*`, `?`, `[...]` stay within a path segment, `**` spans segments,
    and `{a,b}` alternates. A leading `*` matches dotfiles too."""
    alternatives = []
    for option in _expand_braces(pattern):
        parts, out = option.split("/"), []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "**":
                out.append(".*" if last else "(?:.*/)?")
            else:
                out.append(_segment_regex(part) + ("" if last else "/"))
        alternatives.append("".join(out))
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)


class _GlobInput(ToolInput):
    pattern: str = Field(min_length=1,
                         description="A glob such as '**/*.py' or 'src/*.{ts,tsx}'.")
    path: str = Field(default=".", description="The folder to search; the workdir by default.")


class GlobTool(PathTool[_GlobInput]):
    """`glob`: the files below a folder whose path matches a glob, sorted, as absolute paths."""

    name = "glob"
    description = (
        "Find files by path pattern below a folder: '*' and '?' match within one path segment, "
        "'**' matches any number of folders, '{a,b}' alternates. A relative pattern is matched "
        "against paths relative to the folder ('*.py' only at its top; '**/*.py' at any "
        f"depth). Returns absolute paths, sorted, at most {MAX_ENTRIES}."
    )
    input_model = _GlobInput

    async def act(self, args: _GlobInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Walk the folder (links not followed) and match each regular file's path. Paths
        are listed under the resolved folder; an absolute pattern may name either form."""
        root = target.real
        regex = glob_regex(args.pattern if args.pattern.startswith("/")
                           else args.pattern.removeprefix("./"))
        with file_errors():
            entries = await ctx.sandbox.walk(root)
        found = sorted(
            posixpath.join(root, entry.path) for entry in entries
            if entry.kind == "file" and _glob_match(regex, args.pattern, target, entry.path)
        )
        lines = found[:MAX_ENTRIES] or ["no files match"]
        if len(found) > MAX_ENTRIES:
            lines.append(f"({len(found)} files match; showing the first {MAX_ENTRIES})")
        return ToolOutput(output="\n".join(lines), title=f"{args.pattern} in {root}",
                          metadata={"count": len(found), "truncated": len(found) > MAX_ENTRIES})


def _glob_match(regex: re.Pattern[str], pattern: str, target: Target, path: str) -> bool:
    if not pattern.startswith("/"):
        return regex.fullmatch(path) is not None
    return any(regex.fullmatch(posixpath.join(root, path)) for root in target.patterns)


class _GrepInput(ToolInput):
    pattern: str = Field(min_length=1, description="The regular expression to search for.")
    path: str = Field(default=".", description="A file or folder; the workdir by default.")
    include: str | None = Field(default=None,
                                description="Only search files whose name matches this glob.")


def _grep_command(args: _GrepInput, path: str) -> str:
    pattern, target = shlex.quote(args.pattern), shlex.quote(path)
    rg_glob = grep_include = ""
    if args.include:
        rg_glob = f" -g {shlex.quote(args.include)}"
        grep_include = f" --include={shlex.quote(args.include)}"
    return (
        "if command -v rg >/dev/null 2>&1; then\n"
        f"  rg -n -H --no-heading --color never --sort path{rg_glob} -e {pattern} -- {target}\n"
        "else\n"
        f"  grep -rnHE --exclude-dir=.git{grep_include} -e {pattern} -- {target}\n"
        "fi"
    )


class GrepTool(PathTool[_GrepInput]):
    """`grep`: lines matching a regex, as `path:line:text`, with ripgrep (else `grep -rE`)."""

    name = "grep"
    description = (
        "Search file contents for a regular expression (ripgrep syntax; files ignored by "
        "git and hidden files are skipped). Returns 'path:line:text' lines, sorted by path. "
        "Use include (e.g. '*.py') to filter file names."
    )
    input_model = _GrepInput

    async def act(self, args: _GrepInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Run the search; no match is the output `no matches`, a bad regex a `ToolError`.
        Matches name files under the resolved path."""
        path = target.real
        result = await ctx.sandbox.shell(ShellRequest(
            command=_grep_command(args, path), timeout=ctx.timeout, cwd="/",
            max_output=MAX_GREP_OUTPUT))
        if result.timed_out:
            raise ToolError(f"grep timed out after {ctx.timeout:g} s; narrow the path")
        if result.exit_code == 1 or (result.exit_code == 0 and not result.stdout):
            return ToolOutput(output="no matches", title=args.pattern,
                              metadata={"matches": 0, "truncated": False})
        if not result.stdout:
            raise ToolError(f"grep failed: {result.stderr.strip() or result.exit_code}")
        lines = [_cut(line) for line in result.stdout.split("\n") if line]
        if result.truncated:
            lines = lines[:-1]  # the last line was cut mid-way by the cap
        matches = len(lines)
        if result.truncated:
            lines.append(f"(output capped at {MAX_GREP_OUTPUT} bytes; narrow the search)")
        if result.exit_code != 0 and result.stderr.strip():
            lines.append(f"(some files could not be searched: {result.stderr.strip()[:500]})")
        return ToolOutput(output="\n".join(lines), title=args.pattern,
                          metadata={"matches": matches, "truncated": result.truncated})
