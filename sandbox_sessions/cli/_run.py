"""`run`: an agent task in a fresh session, from a prompt or a task file, for CI.

    sandbox-sessions run "Build the wheel" --model scripted --script model.yaml \\
        --upload .:/workspace --artifacts ./out --permissions ci.yaml --timeout 20m --json
    sandbox-sessions run --task task.yaml

A run makes a session, uploads, runs its steps in order (a prompt is one step), downloads
`/artifacts` when asked, and ends the session unless `--keep`. The exit code says how it
ended (`ExitCode`). The runner itself is `Runner` in `_runner.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import click

from .._exceptions import InvalidArgument
from .._taskfile import (
    TaskAgent,
    TaskFile,
    Upload,
    check_script_file,
    load_permissions,
    load_task,
    parse_duration,
)
from .._types import AGENTS_IMAGE, DEFAULT_IMAGE
from ._app import ExitCode, cli, common, fail, settings
from ._output import output
from ._runner import Plan, Runner

__all__ = ["run"]


def _duration(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except (ValueError, InvalidArgument) as exc:
        fail(f"{option} {value!r}: {exc} (say 90, 90s, 20m or 1h)")


def _uploads(values: tuple[str, ...]) -> list[Upload]:
    uploads: list[Upload] = []
    for value in values:
        try:
            uploads.append(Upload.model_validate(value, context={"base": Path.cwd()}))
        except ValueError as exc:
            fail(f"--upload {value!r}: {_first_error(exc)}")
    return uploads


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors(include_url=False)
        if found:
            return str(found[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


_AGENT_OPTIONS = ("agent_name", "model", "script", "system", "tools", "image", "upload",
                  "permissions", "max_steps", "token_budget", "title")


@cli.command()
@common
@click.argument("prompt", required=False)
@click.option("--task", "task_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Run a task file (YAML: agent, upload, artifacts, steps) instead of a "
                   "prompt.")
@click.option("--agent", "agent_name", default="run", show_default=True,
              help="The agent's name (sessions are listed by it).")
@click.option("--harness", type=click.Choice(["builtin", "claude-code", "codex", "opencode"]),
              default=None, help="What runs the turns: our loop (builtin, the default) or "
                                 "that agent CLI inside the sandbox.")
@click.option("--model", default=None,
              help="provider/model (anthropic/…, openai/…), or `scripted` with --script.")
@click.option("--script", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The scripted model's entries (YAML or JSON); implies --model scripted.")
@click.option("--system", default=None, help="The system prompt.")
@click.option("--tools", default=None, metavar="NAMES",
              help="Comma-separated built-in tools (default: the agent's default tools).")
@click.option("--image", default=None, help=f"The sandbox image (default: {DEFAULT_IMAGE}, "
                                           f"or {AGENTS_IMAGE} for a harness).")
@click.option("--upload", multiple=True, metavar="SRC:DST",
              help="Copy a host folder or file into the container first (repeatable); "
                   ".gitignore is respected.")
@click.option("--artifacts", "artifacts_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Download /artifacts here at the end.")
@click.option("--permissions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML of permission rules, as agent(permissions=...) takes them.")
@click.option("--ask", type=click.Choice(["reject", "once", "fail", "wait"]), default=None,
              help="How a permission request is answered when stdin is not a terminal "
                   "(default: reject); `wait`: leave it to `sandbox-sessions reply` or the "
                   "viewer.")
@click.option("--timeout", default=None, metavar="DURATION",
              help="The whole run's limit (90s, 20m, 1h): past it the turn is aborted, "
                   "exit 7.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Model calls per turn at most (exit 6 past it).")
@click.option("--token-budget", type=click.IntRange(min=1), default=None,
              help="Tokens the session may use (exit 6 past it).")
@click.option("--title", default=None, help="The session's title.")
@click.option("--keep", is_flag=True, help="Keep the session (and its container) at the end.")
def run(prompt: str | None, task_path: Path | None, agent_name: str, harness: str | None,
        model: str | None,
        script: Path | None, system: str | None, tools: str | None, image: str | None,
        upload: tuple[str, ...], artifacts_dir: Path | None, permissions: Path | None,
        ask: str | None, timeout: str | None, max_steps: int | None,
        token_budget: int | None, title: str | None, keep: bool) -> int:
    """Run an agent task in a fresh session: a PROMPT, or a task file's steps.

    Streams what the agent does (`--json`: one event per line, then a `run-result` line).
    On a terminal, permission requests are asked at the keyboard; otherwise `--ask`
    answers them. Ctrl-C aborts the turn and ends the session (unless --keep). Exit codes:
    0 completed, 1 agent error, 5 rejected, 6 limit, 7 timeout, 8 a task's check failed,
    130 interrupted; 2 bad usage, 3 not found, 4 engine down.
    """
    given = {name: value for name, value in {
        "agent_name": agent_name if agent_name != "run" else None, "harness": harness,
        "model": model,
        "script": script, "system": system, "tools": tools, "image": image,
        "upload": upload or None, "permissions": permissions, "max_steps": max_steps,
        "token_budget": token_budget, "title": title}.items() if value is not None}
    if task_path is not None:
        if prompt is not None:
            fail("give a PROMPT or --task, not both")
        if given:
            names = ", ".join("--" + name.replace("_name", "").replace("_", "-")
                              for name in given)
            fail(f"--task takes its agent from the task file: {names} cannot be given too")
        if not task_path.is_file():
            fail(f"no task file at {task_path}", ExitCode.NOT_FOUND)
        task = load_task(task_path)
    else:
        if prompt is None:
            fail("give a PROMPT, or --task FILE")
        task = _prompt_task(prompt, agent_name=agent_name, harness=harness, model=model,
                            script=script,
                            system=system, tools=tools, image=image, upload=upload,
                            permissions=permissions, max_steps=max_steps,
                            token_budget=token_budget)
    plan = Plan(
        task=task,
        artifacts=artifacts_dir if artifacts_dir is not None else task.artifacts,
        timeout=_duration(timeout, "--timeout") if timeout else task.agent.timeout,
        ask=ask or "reject",
        interactive=ask is None and sys.stdin.isatty() and not settings().json,
        keep=keep,
        title=title or (task_path.name if task_path else _title(prompt or "")),
    )
    opts = settings()
    runner = Runner(plan, output(), url=opts.url, store=opts.store)
    return int(anyio.run(runner.run))


def _title(prompt: str) -> str:
    line = prompt.strip().splitlines()[0] if prompt.strip() else "run"
    return line if len(line) <= 60 else line[:59] + "…"


def _prompt_task(prompt: str, *, agent_name: str, harness: str | None, model: str | None,
                 script: Path | None,
                 system: str | None, tools: str | None, image: str | None,
                 upload: tuple[str, ...], permissions: Path | None, max_steps: int | None,
                 token_budget: int | None) -> TaskFile:
    """A one-step task from `run`'s options."""
    if script is not None:
        if not script.is_file():
            fail(f"no script file at {script}", ExitCode.NOT_FOUND)
        check_script_file(script)
        model = model or "scripted"
    if model is None:
        fail("--model is required (provider/model, or --script FILE for the scripted model)")
    rules = {}
    if permissions is not None:
        if not permissions.is_file():
            fail(f"no permissions file at {permissions}", ExitCode.NOT_FOUND)
        rules = load_permissions(permissions)
    agent: dict[str, object] = {"name": agent_name, "model": model, "permissions": rules,
                                "harness": harness or "builtin"}
    if image is not None:
        agent["image"] = image
    if script is not None:
        agent["script"] = Path(os.path.abspath(script))
    if system is not None:
        agent["system"] = system
    if tools is not None:
        agent["tools"] = [name.strip() for name in tools.split(",") if name.strip()]
    if max_steps is not None:
        agent["max_steps"] = max_steps
    if token_budget is not None:
        agent["token_budget"] = token_budget
    try:
        task_agent = TaskAgent.model_validate(agent, context={"base": Path.cwd()})
    except ValueError as exc:
        fail(f"invalid agent options: {_first_error(exc)}")
    steps = [{"prompt": prompt, "name": "prompt"}]
    return TaskFile.model_validate({"agent": task_agent, "upload": _uploads(upload),
                                    "steps": steps}, context={"base": Path.cwd()})
