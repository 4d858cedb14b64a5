"""Bash command lines and the decision each must get, for the rule matcher's tests.

Four rule sets judge each line:

- `ASK`: ask by default, a few commands allowed, `touch` denied;
- `DENY`: deny by default, the same commands allowed;
- `OPEN`: allow by default, `touch` denied, `id` and `curl` asked;
- `ALL`: allow everything: only a line the parser cannot see through (blind) gets `ask`.

A line is judged as the strictest of the whole line as written and every command it can
run; a blind line gets the strictest rule that could apply to any text, and never better
than `ask` (so `deny` under the first three sets, which all hold a `deny` rule).

Every command here is harmless when run: the differential test runs the lines the matcher
allows in a throwaway container. `touch` (which leaves evidence) is the forbidden command,
never `rm`.
"""

from __future__ import annotations

from typing import NamedTuple

from sandbox_sessions._types import PermissionAction, PermissionRules

ALLOW: PermissionAction = "allow"
ASK: PermissionAction = "ask"
DENY: PermissionAction = "deny"

SAFE = ["git status *", "ls *", "echo *", "cat *", "true *"]
RULE_SETS: dict[str, PermissionRules] = {
    "ask": {"bash": {"*": "ask", **dict.fromkeys(SAFE, ALLOW), "touch *": "deny"}},
    "deny": {"bash": {"*": "deny", **dict.fromkeys(SAFE, ALLOW)}},
    "open": {"bash": {"*": "allow", "touch *": "deny", "id *": "ask", "curl *": "ask"}},
    "all": {"bash": "allow"},
}


class Row(NamedTuple):
    """A line and its decision under each rule set, in the order of `RULE_SETS`."""

    line: str
    ask: PermissionAction
    deny: PermissionAction
    open: PermissionAction
    all: PermissionAction = ALLOW


def allowed(line: str) -> Row:
    """A line that runs only allowed commands, and that every rule set allows."""
    return Row(line, ALLOW, ALLOW, ALLOW)


def touches(line: str) -> Row:
    """A line that can run `touch`, seen through: denied wherever `touch` is."""
    return Row(line, DENY, DENY, DENY)


def blind(line: str) -> Row:
    """A line the parser cannot account for: the strictest rule that could apply, and at
    least `ask` even where everything is allowed."""
    return Row(line, DENY, DENY, DENY, ASK)


def other(line: str, *, open_: PermissionAction = ALLOW) -> Row:
    """A line that runs a command no rule names (asked, denied by default, allowed when
    open; `open_` when the open set names it)."""
    return Row(line, ASK, DENY, open_)


BASICS = [
    allowed("ls"),
    allowed("ls -la src"),
    allowed("git status"),
    allowed("git status --short"),
    allowed("echo hi"),
    allowed("cat README.md"),
    allowed("true"),
    allowed("ls touch"),  # `touch` as an argument
    other("git push"),
    other("git -C repo status"),  # not `git status ...` as written
    other("lsblk"),  # `ls *` is `ls` or `ls ...`, not any word starting with ls
    other("touchy x"),
    other("id", open_=ASK),
    touches("touch x"),
    touches("touch"),
]

LISTS = [
    touches("ls; touch x"),
    touches("ls;touch x"),
    touches("ls && touch x"),
    touches("ls&&touch x"),
    touches("ls || touch x"),
    touches("ls | touch x"),
    touches("ls |& touch x"),
    touches("ls & touch x"),
    touches("ls\ntouch x"),
    touches("echo ok\n\ntouch x"),
    touches("! touch x"),
    allowed("echo a | cat | ls"),
    allowed("ls &"),
    allowed("echo a;"),
    allowed("ls && { echo a; echo b; }"),
    other("git status && git push"),
    other("true; ls"),  # the whole line as written matches no allow rule
    Row("ls; id", ASK, DENY, ASK),
]

# The issue's three shapes: a comment then a new line, `;(` without a space, ANSI-C quoting.
ISSUE_SHAPES = [
    touches("ls # comment\ntouch x"),
    touches("echo a # c \\\ntouch x"),  # a backslash does not continue a comment
    touches("echo a;#b\ntouch x"),
    touches("echo a#b; touch x"),  # `#` inside a word starts no comment
    allowed("echo a #; touch x"),
    touches("ls;(touch x)"),
    Row("ls;(id)", ASK, DENY, ASK),
    touches("$'touch' x"),
    touches("echo ok; $'\\x74ouch' x"),
]

QUOTING = [
    touches('"touch" x'),
    touches("'touch' x"),
    touches("\\touch x"),
    touches("t\\ouch x"),
    touches('"to""uch" x'),
    touches("to''uch x"),
    touches("$'\\164\\157\\165\\143\\150' x"),
    touches("$'\\u0074ouch' x"),
    touches("\"t\"o'u'$'c'h x"),
    touches("/usr/bin/touch x"),  # a path is judged by its base name too
    touches("./touch x"),
    allowed("echo 'touch x'"),
    allowed('echo "a; touch x"'),
    allowed("echo a\\;touch x"),
    allowed('echo "a\\"; touch x"'),
    allowed("echo 'a'\"'\"'; touch x'"),
    allowed('echo "$\'touch\'"'),  # no ANSI-C quoting inside double quotes
    other('e"ch"o hi'),  # the line as written is not `echo ...`
    other("/bin/ls -la"),  # `ls -la` is allowed, `/bin/ls -la` is not named
]

SUBSTITUTIONS = [
    touches("echo $(touch x)"),
    touches("echo `touch x`"),
    touches('echo "$(touch x)"'),
    touches('echo "`touch x`"'),
    touches("cat <(touch x)"),
    touches("ls > >(touch x)"),
    touches("echo $(echo $(touch x))"),
    touches("x=$(touch y)"),
    touches("export x=$(touch y)"),
    touches("echo ${x:-$(touch y)}"),
    touches("ls > $(touch x)"),
    touches("cat <<< $(touch x)"),
    touches("echo $(ls; touch x)"),
    allowed("echo '$(touch x)'"),
    allowed("echo $(ls)"),
    allowed("echo $(git status)"),
    allowed("echo $(<README.md)"),
    allowed("ls $(echo -la)"),
    Row("echo $(id)", ASK, DENY, ASK),
    Row('echo "$(ls)$(id)"', ASK, DENY, ASK),
    blind("$(echo touch) x"),
    blind("`echo ls`"),
    blind('"$(echo touch)" x'),
    blind("echo `echo \\`touch x\\``"),  # backquotes nested with backslashes
]

COMPOUND = [
    touches("(touch x)"),
    touches("{ touch x; }"),
    touches("if true; then touch x; fi"),
    touches("if touch x; then :; fi"),
    touches("if false; then :; elif true; then :; else touch x; fi"),
    touches("while touch x; do break; done"),
    touches("until true; do touch x; done"),
    touches("for i in a; do touch $i; done"),
    touches("for ((i=0;i<1;i++)); do touch x; done"),
    touches("case a in a) touch x;; esac"),
    touches("case $(touch x) in *) ;; esac"),
    touches("select s in a; do touch x; done"),
    touches("f() { touch x; }"),  # a body is judged where it is defined
    touches("function f { touch x; }"),
    touches("f() ( touch x )"),
    touches("coproc touch x"),
    touches("time touch x"),
    touches("time -p touch x"),
    touches("[[ $(touch x) ]]"),
    touches("[[ -f x ]] && touch y"),
    touches("[ -f x ] && touch y"),
    touches("[ -f $(touch x) ]"),
    other("(ls)"),
    other("{ ls; }"),
    other("if true; then echo yes; fi"),
    other("for f in *; do echo $f; done"),
    other("[[ -f x ]] && echo y"),
    other("[ -f x ]"),
    other("f() { ls; }; f"),
    other("case x in @(a|b)) ls;; esac"),
    touches("[[ x =~ ^a$(touch y)b ]]"),
    touches("[[ x == *$(touch y)* ]]"),
    blind("case x in @(a|`touch y`)) ;; esac"),  # an extglob is one token to the parser
]

HEREDOCS = [
    touches("cat <<EOF\n$(touch x)\nEOF"),
    touches("cat <<EOF\n${x:-$(touch y)}\nEOF"),
    touches("cat <<EOF\nhello\nEOF\ntouch x"),
    touches("cat <<E\nE\ntouch x"),
    allowed("cat <<'EOF'\n$(touch x)\nEOF"),
    allowed('cat <<"EOF"\n$(touch x)\nEOF'),
    allowed("cat <<EOF\nplain text\nEOF"),
    allowed("cat <<EOF\n$HOME and ${PWD}\nEOF"),
    allowed("cat > notes.txt <<EOF\nline\nEOF"),
    blind("cat <<EOF\n`touch x`\nEOF"),
    blind("cat <<EOF | bash\nls\nEOF"),
    blind("cat <<EOF\nEOF \ntouch x\nEOF"),  # bash ends at the bare `EOF`, tree-sitter before
    blind("cat <<-EOF\n\t$(touch x)\n\tEOF"),
]

RUNNERS = [
    touches("env touch x"),
    touches("env -i touch x"),
    touches("env FOO=1 touch x"),
    touches("env -u HOME touch x"),
    touches("env --chdir=/tmp touch x"),
    touches("/usr/bin/env touch x"),
    touches("sudo touch x"),
    touches("sudo -u root touch x"),
    touches("nohup touch x"),
    touches("nice touch x"),
    touches("nice -n 5 touch x"),
    touches("ionice -c3 touch x"),
    touches("timeout 5 touch x"),
    touches("timeout -s KILL 5 touch x"),
    touches("stdbuf -o0 touch x"),
    touches("setsid touch x"),
    touches("command touch x"),
    touches("builtin eval 'touch x'"),
    touches("exec touch x"),
    touches("xargs touch"),
    touches("xargs -I{} touch {}"),
    touches("xargs -0 -n1 touch"),
    touches("find . -exec touch {} \\;"),
    touches("find . -execdir touch {} +"),
    touches("find . -name x -ok touch {} \\;"),
    touches("busybox touch x"),
    touches("flock /tmp/l touch x"),
    touches("flock /tmp/l -c 'touch x'"),
    touches("watch touch x"),
    touches("env xargs touch"),
    other("env ls"),
    other("command -v touch"),  # `-v` only looks the name up
    other("builtin echo hi"),
    other("find . -name '*.py'"),
    blind("env -S 'touch x'"),  # an option not modelled: the command cannot be found
    blind("parallel touch ::: a"),
    blind("chrt 1 touch x"),
    blind("strace -f touch x"),
    blind("time -f %e touch x"),  # bash's `time` takes `-p` only
]

LINE_RUNNERS = [
    touches("eval 'touch x'"),
    touches('eval "ls; touch x"'),
    touches("eval eval touch x"),
    touches("eval 'echo $(touch x)'"),
    touches("bash -c 'touch x'"),
    touches("sh -c 'touch x'"),
    touches("bash -lc 'touch x'"),
    touches("dash -c 'touch x'"),
    touches("bash -c \"bash -c 'touch x'\""),
    touches("trap 'touch x' EXIT"),
    touches("trap -- 'touch x' ERR"),
    touches("su -c 'touch x'"),
    touches("script -q -c 'touch x' /dev/null"),
    other("bash -c 'ls'"),
    other("bash -c 'echo hi' arg0 arg1"),
    other("bash script.sh"),  # a script is judged by the command that runs it
    other("source ./x.sh"),
    other(". ./x.sh"),
    blind("eval $cmd"),
    blind('eval "$(cat f)"'),
    blind("bash -c \"$cmd\""),
    blind("zsh -c 'ls'"),
    blind("bash"),
    blind("echo ls | bash"),
    blind("bash -s < f"),
    blind("su"),
    blind("script -qc 'ls' /dev/null"),  # combined options are not read: the line is unknown
    # An alias's value is pasted into later text: judging it alone is not enough.
    blind("shopt -s expand_aliases; alias x='echo hi;'\nx touch y"),
    blind("alias ll='touch x'"),
    blind("alias ll='ls -la'"),
    other("alias"),
]

VARIABLES = [
    blind("PATH=/tmp ls"),
    blind("export PATH=/tmp:$PATH"),
    blind("BASH_ENV=/tmp/x bash -c ls"),
    blind("PROMPT_COMMAND='touch x'"),
    blind("PS4='$(touch x)'"),
    blind("LD_PRELOAD=/tmp/x.so ls"),
    blind("env 'BASH_FUNC_ls%%=() { touch x; }' bash -c ls"),
    blind("echo $((a[$(touch x)]))"),
    blind("x='a[$(touch y)]'; echo $((x))"),
    blind("x=$1; a=([x]=1)"),
    blind("x=$1; b[x]=1"),
    blind("read x; echo $((x))"),
    blind("read; echo $((REPLY))"),
    blind("getopts a: o; echo $((OPTARG))"),
    blind("[[ $(cat f) =~ (.*) ]]; echo $((BASH_REMATCH[1]))"),
    blind("let 'x=a[$(touch y)]'"),
    blind("(( a[$(touch x)] ))"),
    blind("echo $(( $(id) + 1 ))"),
    blind("declare -i n"),
    blind("declare -n r=x"),
    blind("unset 'a[$(touch x)]'"),
    blind("printf -v 'a[$(touch x)]' %s 1"),
    blind("read 'a[$(touch x)]'"),
    blind("[[ -v 'a[$(touch x)]' ]]"),
    blind("[ -v 'a[$(touch x)]' ]"),
    blind("[[ $1 -eq 1 ]]"),
    blind("echo ${x@P}"),
    blind('echo "${a[\'$(touch x)\']}"'),
    blind("compgen -W '$(touch x)' a"),
    allowed("echo ${!x}"),  # variables the line does not set come from the user's env
    allowed("echo $((RANDOM % 6))"),
    allowed("echo ${x@Q}"),
    other("x=1; echo $((x+1))"),
    other("i=0; echo ${a[i]}"),
    other("x=5"),
]

BLIND_OTHERS = [
    blind("enable -f /tmp/x.so x"),
    blind("fc -s"),
    blind("hash -p /usr/bin/touch ls; ls"),
    blind("mapfile -C 'touch x' -c 1 a"),
    blind("$cmd"),
    blind("${cmd} x"),
    blind('"$@"'),
    blind("t* x"),  # a glob as the command name
    blind("~/bin/touch x"),
    blind("{touch,x}"),
    blind("t{o,}uch x"),
    blind("'my tool' --flag"),  # a name with a blank: no pattern can name it exactly
    allowed("echo {a,b}"),
]

SYNTAX_ERRORS = [
    blind("echo 'unclosed"),
    blind('echo "unclosed'),
    blind("ls; )"),
    blind("echo $("),
    blind("if true; then ls"),
    blind("ls |"),
    blind("echo a; ;"),
    blind("done"),
    blind("((ls); touch x)"),
    blind("{ls;}"),  # `{` glued to a word is not the reserved word
    blind("echo \\$(touch x)"),
]

BYTES_AND_BLANKS = [
    blind("ls\r\ntouch x"),
    blind("echo hi\r"),
    blind("echo\u00a0hi"),  # bash does not split on a no-break space
    blind("ls\u3000-la"),
    blind("ls\u2028touch x"),
    blind("ls\x00; touch x"),
    blind("ls\vx"),
    blind("ec\\\nho hi"),  # a line continuation inside a word
    blind("echo a\\\ntouch x"),
    allowed("echo \u00a0touch x"),
    allowed("ls \\\n-la"),
    other("ls\ttouch"),  # `ls *` needs a space after `ls`, as written
]

LONG = [
    allowed("echo " + "a " * 20_000),
    touches("echo " + "a " * 20_000 + "; touch x"),
    allowed(" && ".join(["ls"] * 500)),
    touches(" && ".join(["ls"] * 500) + " && touch x"),
    allowed("echo " + "$(echo " * 30 + "x" + ")" * 30),
    touches("echo " + "$(echo " * 30 + "$(touch x)" + ")" * 30),
    blind("echo " + "$(echo " * 150 + "x" + ")" * 150),  # nested too deep to walk
    blind("ls; " * 15_000 + "touch x"),  # too many parts to walk
    blind("echo " + "a" * (1 << 21)),  # longer than a line may be
    blind("eval " * 20 + "ls"),
]

TABLE: list[Row] = [
    *BASICS, *LISTS, *ISSUE_SHAPES, *QUOTING, *SUBSTITUTIONS, *COMPOUND, *HEREDOCS, *RUNNERS,
    *LINE_RUNNERS, *VARIABLES, *BLIND_OTHERS, *SYNTAX_ERRORS, *BYTES_AND_BLANKS, *LONG,
]

# Generated variations: each template puts a payload where bash runs it as a command.
TEMPLATES = [
    "{}", "echo a; {}", "echo a;{}", "echo a && {}", "false || {}", "echo a | {}",
    "echo a\n{}", "echo a # c\n{}", "echo a;({})", "({})", "{ {}; }", "! {}", "time {}",
    "echo $({})", "echo `{}`", 'echo "$({})"', "cat <({})", "echo ${x:-$({})}", "x=$({})",
    "cat <<E\n$({})\nE", "echo $(echo $({}))", "if true; then {}; fi", "if {}; then true; fi",
    "for i in 1; do {}; done", "while {}; do break; done", "case a in a) {};; esac",
    "f() { {}; }; f", "eval '{}'", "eval {}", "bash -c '{}'", "trap '{}' EXIT", "env {}",
    "command {}", "nohup {}", "timeout 5 {}", "xargs {} < /dev/null",
    "find /dev/null -exec {} \\;", "nice -n 1 {}",
]
FORBIDDEN_PAYLOADS = [
    "touch pwned", "$'touch' pwned", "t\\ouch pwned", '"to""uch" pwned', "\\touch pwned",
    "$'\\x74ouch' pwned", "/usr/bin/touch pwned", "id",
]
"""Spellings of commands that no rule set allows (`touch` is denied, `id` asked or denied)."""
BENIGN_PAYLOADS = ["echo ok", "ls", "cat /dev/null", "true"]


def variations(payloads: list[str]) -> list[str]:
    """Every template filled with every payload."""
    return [template.replace("{}", payload) for template in TEMPLATES for payload in payloads]
