"""Judging one simple command: what it runs besides itself.

Pure logic, no I/O. `judge(words, sink)` records the command (its words, and again with a
path name cut to its base name: `/bin/rm` is also `rm`), then looks at its name:

- **Runners** run their arguments as a command: `env`, `nice`, `nohup`, `timeout`, `sudo`,
  `xargs`, `exec`, `command`, `builtin`, `time`, `stdbuf`, `setsid`, `find -exec`... The
  inner command is judged too, after the runner's options (known ones only: an option the
  table does not know may take an argument, so the inner command cannot be found and the
  line is blind).
- **Line runners** run a string as a shell line: `eval`, `bash|sh|dash|ksh -c`, `trap`,
  `watch`, `su -c`, `flock -c`, `script -c`. A static string is parsed and judged like the
  line itself; anything else is blind.
- **Blind**: a name only known when the command runs, a shell reading commands from its
  input, `zsh`/`fish -c` (another language), an alias definition (its value is pasted into
  later text), `enable -f`, `fc`, `hash -p`, `compgen -C/-F/-W`, and tools that run their
  arguments in ways not modelled here (`parallel`, `strace`...).
- **Builtins that set or name variables** (`read`, `declare`, `unset`...) are checked by
  `_bash_variables`.

A script file is judged by the command that runs it (`bash x.sh`, `. x.sh`, `./x.sh`): the
rules name that command, not what the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from ._bash_variables import BUILTINS, Findings, assign_to
from ._bash_words import Spec, Word, scan, static_word
from ._patterns import ANY

__all__ = ["Sink", "judge"]


class Sink(Protocol):
    """Where a judged command reports: the walk's findings, and nested lines to parse."""

    findings: Findings

    def line(self, text: str) -> None:
        """Parse `text` as a bash line and judge everything it can run."""


_RESERVED = frozenset({
    "!", "((", "))", "[[", "]]", "{", "}", "case", "do", "done", "elif", "else", "esac",
    "fi", "for", "function", "if", "in", "select", "then", "until", "while",
})
_ENV_WORD = re.compile(r"([^=]+)=(.*)", re.DOTALL)


def _blind(sink: Sink, reason: str) -> None:
    sink.findings.blind.append(reason)


def judge(words: Sequence[Word], sink: Sink) -> None:
    """Record the command `words` and judge what it runs or changes."""
    if not words:
        return
    sink.findings.commands.append(tuple(words))
    name = words[0].text
    if name is None:
        _blind(sink, "a command whose name is only known when it runs")
        return
    if name in _RESERVED or any(char.isspace() for char in name):
        _blind(sink, f"a command named {name!r}")
        return
    base = name.rsplit("/", 1)[-1]
    if base != name:
        sink.findings.commands.append((static_word(base), *words[1:]))
    if name == "time":  # the reserved word, which takes `-p` only
        _run(name, words, _TIME_KEYWORD, sink)
    elif base in _HANDLERS:
        _HANDLERS[base](words, sink)
    elif base in BUILTINS:
        BUILTINS[base](words, sink.findings)
    elif base in _RUNNERS:
        _run(base, words, _RUNNERS[base], sink)
    elif base in _OPAQUE and len(words) > 1:
        _blind(sink, f"{base} runs its arguments in ways not modelled here")


def _texts(words: Sequence[Word], sink: Sink) -> list[str] | None:
    texts = [word.text for word in words]
    if any(text is None for text in texts):
        _blind(sink, "a command line only known when it runs")
        return None
    return [text for text in texts if text is not None]


def _run(base: str, words: Sequence[Word], spec: Spec, sink: Sink) -> None:
    scanned = scan(spec, words)
    if scanned is None:
        _blind(sink, f"{base} options that hide where its command starts")
        return
    start, seen = scanned
    if any(option in seen for option in spec.none):
        return
    while spec.assignments and start < len(words):
        match = _ENV_WORD.fullmatch(words[start].text or "")
        if match is None:
            break
        assign_to(match.group(1), None, sink.findings)
        start += 1
    rest = list(words[start:])
    if base == "coproc" and any(word.text in ("{", "}") for word in rest):
        _blind(sink, "a coprocess the parser does not read")
    elif rest and base in _INNER:
        _INNER[base](rest, sink, seen)
    elif rest:
        judge(rest, sink)
    elif spec.stdin_if_bare:
        _blind(sink, f"{base} runs a shell reading its input")


def _xargs(rest: list[Word], sink: Sink, seen: dict[str, str]) -> None:
    replace = seen.get("I") or seen.get("--replace") or seen.get("i") or (
        "{}" if "i" in seen or "--replace" in seen else "")
    if replace:
        rest = [Word((ANY,)) if replace in (word.text or "") else word for word in rest]
    judge([*rest, Word((ANY,), splits=True)], sink)


def _watch(rest: list[Word], sink: Sink, seen: dict[str, str]) -> None:
    if "x" in seen or "--exec" in seen:
        judge(rest, sink)
    elif (texts := _texts(rest, sink)) is not None:
        sink.line(" ".join(texts))  # watch runs `sh -c` on its arguments joined


def _flock(rest: list[Word], sink: Sink, seen: dict[str, str]) -> None:
    if rest[0].text in ("-c", "--command"):
        _line_argument(rest[1:], sink)
    else:
        judge(rest, sink)


_INNER: dict[str, Callable[[list[Word], Sink, dict[str, str]], None]] = {
    "xargs": _xargs, "watch": _watch, "flock": _flock,
}


def _line_argument(words: Sequence[Word], sink: Sink) -> None:
    if not words:
        return
    text = words[0].text
    if text is None:
        _blind(sink, "a command line only known when it runs")
    else:
        sink.line(text)


_BASH_LIKE = frozenset({"ash", "bash", "dash", "ksh", "mksh", "posh", "rbash", "sh", "yash"})
_SHELL_LONG = frozenset({
    "--debugger", "--dump-po-strings", "--dump-strings", "--login", "--noediting",
    "--noprofile", "--norc", "--posix", "--pretty-print", "--restricted", "--verbose",
})


def _shell(words: Sequence[Word], sink: Sink) -> None:
    """`bash -c LINE` judges LINE; `bash FILE` is judged by its own words (like `source`);
    a shell reading its commands from its input, or another language's `-c`, is blind."""
    i, line_mode = 1, False
    while i < len(words):
        text = words[i].text
        if text is None:
            _blind(sink, "shell options only known when it runs")
            return
        if text in ("--version", "--help"):
            return
        if text in ("-", "--") or not (text[:1] in ("-", "+") and len(text) > 1):
            i += text in ("-", "--")
            break
        if text in ("--rcfile", "--init-file"):
            i += 2
        elif text.startswith("--") and text not in _SHELL_LONG:
            _blind(sink, f"a shell option {text} not modelled here")
            return
        else:
            letters = "" if text.startswith("--") else text[1:]
            if "s" in letters:
                _blind(sink, "a shell reading commands from its input")
                return
            line_mode = line_mode or "c" in letters
            i += 1 + letters.count("o") + letters.count("O")
    if line_mode and (words[0].text or "").rsplit("/", 1)[-1] not in _BASH_LIKE:
        _blind(sink, "a shell line in another language")
    elif line_mode:
        _line_argument(words[i:], sink)
    elif i >= len(words):
        _blind(sink, "a shell reading commands from its input")


def _eval(words: Sequence[Word], sink: Sink) -> None:
    texts = _texts(words[1:], sink)
    if texts is not None:
        sink.line(" ".join(texts[1:] if texts[:1] == ["--"] else texts))


def _trap(words: Sequence[Word], sink: Sink) -> None:
    texts = _texts(words[1:], sink)
    if texts and texts[0] == "--":
        texts = texts[1:]
    if texts and not texts[0].startswith("-"):
        sink.line(texts[0])


def _alias(words: Sequence[Word], sink: Sink) -> None:
    # A value is pasted into the text after it (`alias x='echo;'` then `x rm y` runs rm), so
    # judging the value alone does not account for what the line runs.
    for word in words[1:]:
        if word.text is None or ("=" in word.text and not word.text.startswith("-")):
            _blind(sink, "an alias, which changes how bash reads later words")
            return


def _line_option(words: Sequence[Word], sink: Sink) -> None:
    """`su -c LINE`, `script -c LINE`; without one they run an interactive shell."""
    for i, word in enumerate(words[1:], 1):
        text = word.text
        if text in ("-c", "--command", "--session-command"):
            _line_argument(words[i + 1:], sink)
            return
        if text is not None and text.startswith(("--command=", "--session-command=")):
            sink.line(text.split("=", 1)[1])
            return
    _blind(sink, f"{words[0].text} runs a shell reading its input")


def _find(words: Sequence[Word], sink: Sink) -> None:
    i = 1
    while i < len(words):
        text = words[i].text
        if text is None:
            _blind(sink, "a find expression only known when it runs")
            return
        i += 1
        if text not in ("-exec", "-execdir", "-ok", "-okdir"):
            continue
        inner: list[Word] = []
        while i < len(words) and words[i].text not in (";", "+"):
            if words[i].splits:
                _blind(sink, "a find -exec command only known when it runs")
                return
            inner.append(Word((ANY,)) if "{}" in (words[i].text or "") else words[i])
            i += 1
        judge(inner, sink)
        i += 1


def _blind_if(options: str, reason: str) -> Callable[[Sequence[Word], Sink], None]:
    """A builtin that runs code with one of `options` (`enable -f`, `compgen -C`)."""
    def check(words: Sequence[Word], sink: Sink) -> None:
        for word in words[1:]:
            text = word.text
            if text is None or (text.startswith("-") and set(options) & set(text[1:])):
                _blind(sink, reason)
                return
    return check


def _fc(words: Sequence[Word], sink: Sink) -> None:
    if not (len(words) > 1 and (words[1].text or "").startswith("-l")):
        _blind(sink, "fc runs commands from the history")


_TIME_KEYWORD = Spec(flags="p")
_RUNNERS: dict[str, Spec] = {
    "builtin": Spec(),
    "busybox": Spec(),
    "chroot": Spec(long_flags=frozenset({"--skip-chdir"}),
                   long_takes=frozenset({"--groups", "--userspec"}), operands=1,
                   stdin_if_bare=True),
    "command": Spec(flags="p", none="vV"),
    "coproc": Spec(),
    "doas": Spec(flags="Lns", takes="uC", stdin_if_bare=True),
    "env": Spec(flags="0iv", takes="uC", assignments=True, dash=True,
                long_flags=frozenset({"--debug", "--ignore-environment", "--null"}),
                long_takes=frozenset({"--chdir", "--unset"})),
    "exec": Spec(flags="cl", takes="a"),
    "flock": Spec(flags="sexunoF", takes="wE", operands=1,
                  long_flags=frozenset({"--close", "--exclusive", "--no-fork", "--nonblock",
                                        "--shared", "--unlock", "--verbose"}),
                  long_takes=frozenset({"--conflict-exit-code", "--timeout"})),
    "ionice": Spec(flags="t", takes="cn"),
    "nice": Spec(flags="0123456789", takes="n", long_takes=frozenset({"--adjustment"})),
    "nohup": Spec(),
    "setsid": Spec(flags="cfw", long_flags=frozenset({"--ctty", "--fork", "--wait"})),
    "stdbuf": Spec(takes="ioe", long_takes=frozenset({"--error", "--input", "--output"})),
    "sudo": Spec(flags="AbEHiKkPSs", takes="CDghpRrTtUu", none="elvV", assignments=True,
                 stdin_if_bare=True,
                 long_flags=frozenset({"--background", "--login", "--non-interactive",
                                       "--preserve-env", "--preserve-groups", "--set-home",
                                       "--shell", "--stdin"}),
                 long_takes=frozenset({"--chdir", "--close-from", "--group", "--host",
                                       "--other-user", "--prompt", "--role", "--type",
                                       "--user"})),
    "taskset": Spec(flags="ac", operands=1),
    "time": Spec(flags="pvaq", takes="fo",  # GNU time, by its path or through a runner
                 long_flags=frozenset({"--append", "--portability", "--quiet", "--verbose"}),
                 long_takes=frozenset({"--format", "--output"})),
    "timeout": Spec(flags="v", takes="ks", operands=1,
                    long_flags=frozenset({"--foreground", "--preserve-status", "--verbose"}),
                    long_takes=frozenset({"--kill-after", "--signal"})),
    "watch": Spec(flags="bcdegptwx", takes="nq",
                  long_flags=frozenset({"--beep", "--color", "--differences", "--errexit",
                                        "--exec", "--no-title", "--precise"}),
                  long_takes=frozenset({"--interval"})),
    "xargs": Spec(flags="0prtx", takes="adEILnPs", attached="eil",
                  long_flags=frozenset({"--exit", "--interactive", "--no-run-if-empty",
                                        "--null", "--open-tty", "--replace", "--verbose"}),
                  long_takes=frozenset({"--arg-file", "--delimiter", "--max-args",
                                        "--max-chars", "--max-lines", "--max-procs"})),
}
_OPAQUE = frozenset({
    "bwrap", "catchsegv", "cgexec", "chrt", "dbus-run-session", "expect", "fakechroot",
    "fakeroot", "firejail", "gdb", "ltrace", "nsenter", "numactl", "parallel", "pkexec",
    "prlimit", "proot", "proxychains", "proxychains4", "rlwrap", "sem", "sg", "strace",
    "systemd-run", "torsocks", "unbuffer", "unshare", "valgrind", "xvfb-run",
})
_HANDLERS: dict[str, Callable[[Sequence[Word], Sink], None]] = {
    **dict.fromkeys(_BASH_LIKE | {"zsh", "fish"}, _shell),
    **dict.fromkeys(["runuser", "script", "su"], _line_option),
    "alias": _alias,
    "compgen": _blind_if("CFW", "compgen -C, -F or -W runs code"),
    "enable": _blind_if("f", "enable -f loads code"),
    "eval": _eval,
    "fc": _fc,
    "find": _find,
    "hash": _blind_if("p", "hash -p changes what a name runs"),
    "trap": _trap,
}
