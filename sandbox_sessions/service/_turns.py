"""Turns: a prompt in, an agent loop in the background, events out.

`Turns`, the agent side of the `SessionService` facade, starts each turn as a task of the
service's task group, with its own cancel
scope (for `abort`), and guarantees its single `turn-end`: whatever happens in the loop, the
closing events are emitted in a shielded scope. Each turn holds the session's turn lease
(`_turn_leases.py`) while it runs, so no other process runs a turn of that session meanwhile, and a
turn whose process dies is closed by the next process that looks.

What a turn reads of its session (and what `messages`, `metrics` and `todos` answer) comes from
the session's projection kept in memory (`_views.py`), caught up with the store on each read.
Once a turn has ended and is stored, the deltas of the turns before it are folded in the store
in the background (`Store.fold_deltas`): the latest turn's deltas stay as they were streamed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import anyio
import anyio.abc
import httpx

from .._exceptions import (
    ContainerGone,
    InvalidArgument,
    NotSupported,
    PermissionNotFound,
    QuestionNotFound,
    SandboxUnavailable,
    SessionBusy,
    StoreError,
)
from .._types import (
    AgentConfig,
    AssistantMessage,
    CommandCall,
    CompactionEvent,
    CompactionPart,
    Event,
    Message,
    MessageCreatedEvent,
    MessageUpdatedEvent,
    Metrics,
    PermissionAnswerRequest,
    PermissionRules,
    QuestionAnswerRequest,
    QuestionRequest,
    RetryPart,
    SessionInfo,
    SessionStatusEvent,
    SessionUpdatedEvent,
    StepStartPart,
    Subagent,
    SubtaskEvent,
    SubtaskPart,
    TextDeltaEvent,
    TextPart,
    Todo,
    Tokens,
    TurnEndEvent,
    TurnStarted,
    UserMessage,
)
from .._validation import check_text
from ..agent._broker import PermissionBroker, now
from ..agent._compaction import (
    PRUNED_OUTPUT,
    SUMMARY_PROMPT,
    SUMMARY_SYSTEM,
    context_limit,
    needs_compaction,
)
from ..agent._history import new_id, to_model_messages
from ..agent._loop import Outcome, Turn, run_turn
from ..agent._permissions import validate_rules
from ..agent._pricing import Price
from ..agent._questions import QuestionBroker, check_answer
from ..agent._snapshots import Snapshots
from ..agent._tools import TaskTool, check_rule_keys, resolve_tools
from ..agent.base import Tool, ToolError
from ..agent.harness import check_harness_model, run_harness
from ..providers import resolve_provider
from ..providers._scripted import ScriptedProvider
from ..providers.base import ModelMessage, Provider, TextContent
from ._eventlog import EventLog
from ._mailbox import leave_answer, open_request
from ._projection import final_text, metrics
from ._sessions import Sessions, check_usable
from ._turn_leases import Hold
from ._views import Views

__all__ = ["Turns"]

log: logging.Logger = logging.getLogger("sandbox_sessions.agent")


class _Running:
    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.hold: Hold | None = None
        self.message_id = ""
        self.delegate: tuple[str, str, str, str | None] | None = None
        """A subtask command's agent, prompt, command name and model: the turn runs it in a
        child session instead of calling the model."""
        self.closing = False
        """Set once its closing events are emitted: a new turn then waits for it to end
        rather than being refused (a client may send again as soon as it sees turn-end)."""

    def lost(self) -> None:
        """Another process took the turn's lease over (thinking this one gone) and closes
        the turn itself: stop, and emit nothing more."""
        self.scope.cancel()


class Turns:
    """The agent side of sessions: turns, abort, permissions, and what the log projects."""

    def __init__(
        self,
        sessions: Sessions,
        events: EventLog,
        task_group: anyio.abc.TaskGroup,
        *,
        prices: Mapping[str, Price],
        api_keys: Mapping[str, str],
        http: httpx.AsyncClient,
        extra_tools: Mapping[str, Tool] | None = None,
    ) -> None:
        self.sessions = sessions
        self.events = events
        self.broker: PermissionBroker = PermissionBroker(events)
        self.questions: QuestionBroker = QuestionBroker(events)
        self._task_group = task_group
        self._prices = prices
        self._api_keys = api_keys
        self._http = http
        # Not a copy: the client registers tools in it when agents are made after it opened.
        self._extra_tools: Mapping[str, Tool] = extra_tools if extra_tools is not None else {}
        self._running: dict[str, _Running] = {}
        self._providers: dict[str, tuple[str, Provider, str]] = {}
        self.views: Views = Views(events)

    def busy(self, session_id: str) -> bool:
        """Whether a turn of the session runs here (one whose `turn-end` is out is over)."""
        running = self._running.get(session_id)
        return running is not None and not running.closing

    async def start_turn(
        self, session_id: str, prompt: str, *, model: str | None = None,
        command: CommandCall | None = None,
    ) -> TurnStarted:
        """Record the prompt and start the turn in the background; `SessionBusy` if one runs,
        in this process or another. A turn whose `turn-end` is already out is waited for.
        `model` runs this turn on another model; `command` is kept on the user message."""
        check_text(prompt, "prompt")
        if model is not None:
            check_text(model, "model", empty=False)
            check_harness_model((await self.sessions.get_info(session_id)).config, model)
        if command is not None and command.subtask is not None:
            await self._check_subtask(session_id, command.subtask)
        await self._compact_if_needed(session_id)
        return await self._start(session_id, prompt, model=model, command=command)

    async def summarize(self, session_id: str) -> TurnStarted:
        """Start a compaction in the background: one model call, no tools, whose summary
        message (status `compacting` meanwhile) stands for the history before it once its
        `compaction` part is stored. `InvalidArgument` when there is nothing to summarize;
        `NotSupported` for a harness's session (its CLI compacts its own context)."""
        info = await self.sessions.get_info(session_id)
        if info.config.harness != "builtin":
            raise NotSupported(f"a {info.config.harness} session cannot summarize: its CLI "
                               "keeps and compacts its own context")
        return await self._start(session_id, None)

    async def _closed(self, session_id: str) -> None:
        """Wait for the session's turn whose `turn-end` is out (a client may go on as soon as
        it sees it) to finish closing; return at once when none is closing."""
        ending = self._running.get(session_id)
        if ending is not None and ending.closing:
            await ending.done.wait()

    async def _compact_if_needed(self, session_id: str) -> None:
        """Summarize first when the session's last answer filled its model's context (see
        `agent/_compaction.py`); a compaction that fails leaves the history whole."""
        info = await self.sessions.get_info(session_id)
        await self._closed(session_id)  # its answer's usage decides
        if info.config.model is None or session_id in self._running \
                or info.config.harness != "builtin":  # a CLI compacts its own context
            return
        limit = context_limit(info.config, info.config.model.split("/", 1)[-1])
        if limit is None:
            return
        await self.events.refresh(session_id)
        if not needs_compaction(await self.messages(session_id), limit):
            return
        log.info("session %s: its context is nearly full: compacting first", session_id)
        await self._start(session_id, None)
        running = self._running.get(session_id)
        if running is not None:
            await running.done.wait()

    async def _start(
        self, session_id: str, prompt: str | None, *, model: str | None = None,
        command: CommandCall | None = None,
    ) -> TurnStarted:
        """Start a turn for `prompt`, or a compaction when it is None."""
        await self._closed(session_id)
        if session_id in self._running:
            raise SessionBusy(session_id)
        running = self._running[session_id] = _Running()  # taken before any await: no race
        user = None if prompt is None else UserMessage(
            id=new_id("msg"), session_id=session_id, time_created=now(),
            parts=[TextPart(id=new_id("prt"), text=prompt)], command=command)
        try:
            turn, history, last_user = await self._begin(session_id, running, model, user)
        except BaseException:
            del self._running[session_id]
            running.done.set()  # an abort() that came meanwhile must not wait for ever
            raise
        after = self.events.head(session_id)
        if user is None:
            assert last_user is not None
            parent = last_user
        else:
            self.events.emit(session_id, MessageCreatedEvent, message=user)
            parent = user.id
        assistant = AssistantMessage(id=turn.message_id, session_id=session_id,
                                     parent_id=parent, model=turn.model, time_created=now(),
                                     summary=prompt is None)
        self.events.emit(session_id, MessageCreatedEvent, message=assistant)
        self.events.emit(session_id, SessionStatusEvent,
                         status="compacting" if prompt is None else "busy")
        running.message_id = assistant.id
        if command is not None and command.subtask is not None and prompt is not None:
            running.delegate = (command.subtask, prompt, command.name, model)
        self._task_group.start_soon(self._run, turn, history, assistant, running)
        return TurnStarted(user_message_id=parent, message_id=assistant.id, after=after)

    async def _begin(
        self, session_id: str, running: _Running, model: str | None, user: UserMessage | None
    ) -> tuple[Turn, list[ModelMessage], str | None]:
        """Take the session's turn lease and prepare the turn; the lease is released again if
        the preparation fails."""
        info = await self.sessions.get_info(session_id)
        if model is not None:  # this turn only: the provider is resolved for it
            same = (info.config.model or "").split("/")[0] == model.split("/")[0]
            # the session's base_url is for its own provider: another's gets its default
            info = info.model_copy(update={"config": info.config.model_copy(
                update={"model": model, "base_url": info.config.base_url if same else None})})
        if info.config.model is None:
            raise InvalidArgument("this session's agent has no model: pass agent(model=...)")
        await self.events.refresh(session_id)
        message_id = new_id("msg")
        running.hold = await self.sessions.turns.acquire(
            session_id, message_id=message_id, after=self.events.head(session_id),
            on_lost=running.lost)
        try:
            return await self._prepare(info, message_id, user)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.sessions.turns.release(running.hold)
            raise

    async def _prepare(
        self, info: SessionInfo, message_id: str, user: UserMessage | None
    ) -> tuple[Turn, list[ModelMessage], str | None]:
        """The turn for the prompt `user` (None: a compaction), the history it sends (the
        prompt included), and the session's last user message's id before it."""
        summarize = user is None
        config = info.config
        assert info.config.model is not None
        chosen = [self._extra_tools.get(name, name) for name in config.tools]
        tools = {tool.name: tool for tool in resolve_tools(chosen)}
        sandbox = await self.sessions.sandbox(info.id)
        await self.events.refresh(info.id)
        messages = await self.messages(info.id)
        last_user = next((m.id for m in reversed(messages) if m.role == "user"), None)
        if summarize:
            if last_user is None:
                raise InvalidArgument("nothing to summarize: the session has no messages")
            tools = {}
            config = config.model_copy(update={"max_steps": 1, "system": SUMMARY_SYSTEM})
            history = [*to_model_messages(messages, limit=PRUNED_OUTPUT),
                       ModelMessage("user", (TextContent(SUMMARY_PROMPT),))]
        else:
            assert user is not None
            history = to_model_messages([*messages, user], limit=config.max_tool_output)
        snapshots = None if summarize or not config.snapshots else Snapshots(
            sandbox, info.sandbox.workdir, max_file=config.snapshot_max_file)
        conversation = None
        if config.harness != "builtin":
            provider: Provider | None = None
            model_name = info.config.model.split("/", 1)[-1]
            snapshots = None
            conversation = next((m.conversation_id for m in reversed(messages)
                                 if isinstance(m, AssistantMessage) and m.conversation_id),
                                None)
        else:
            provider, model_name = await self._provider(info)
        if "task" in tools:  # this session's subagents, named in the tool's description
            tools["task"] = TaskTool({name: agent.description
                                      for name, agent in config.subagents.items()})

        async def save_rules(rules: PermissionRules) -> None:
            await self.update(info.id, permissions=rules)

        turn = Turn(session_id=info.id, message_id=message_id, model=info.config.model,
                    model_name=model_name, config=config, provider=provider, tools=tools,
                    sandbox=sandbox, workdir=info.sandbox.workdir, events=self.events,
                    broker=self.broker, questions=self.questions, prices=self._prices,
                    rules=dict(config.permissions),
                    save_rules=save_rules,
                    tokens_left=None if config.token_budget is None
                    else config.token_budget - info.tokens.total, summarize=summarize,
                    subtasks=self._subtask, snapshots=snapshots,
                    prompt_id=None if user is None else user.id,
                    prompt="" if user is None else final_text(user),
                    conversation=conversation)
        return turn, history, last_user

    async def snapshots(self, info: SessionInfo) -> Snapshots:
        """The snapshot operations of the session's sandbox."""
        return Snapshots(await self.sessions.sandbox(info.id), info.sandbox.workdir,
                         max_file=info.config.snapshot_max_file)

    async def _provider(self, info: SessionInfo) -> tuple[Provider, str]:
        """The session's provider, kept across turns (a scripted one keeps its place: one
        made anew skips every model call the log holds, those of hidden branches too)."""
        config = info.config
        assert config.model is not None
        key = config.model_dump_json(exclude={"permissions"})
        cached = self._providers.get(info.id)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        base_urls = {config.model.split("/")[0]: config.base_url} if config.base_url else None
        provider, model_name = resolve_provider(
            config.model, api_keys=self._api_keys, base_urls=base_urls,
            script=config.script, http_client=self._http)
        if isinstance(provider, ScriptedProvider):
            provider.skip(_model_calls(await self.messages(info.id, hidden=True)))
        self._providers[info.id] = (key, provider, model_name)
        return provider, model_name

    async def _run(self, turn: Turn, history: list[ModelMessage], message: AssistantMessage,
                   running: _Running) -> None:
        outcome = Outcome("completed")
        try:
            with running.scope:
                try:
                    if running.delegate is not None:
                        outcome = await self._delegate(turn, running.delegate, outcome)
                    elif turn.config.harness != "builtin":
                        outcome = await run_harness(turn, outcome, api_keys=self._api_keys,
                                                    http=self._http)
                    else:
                        outcome = await run_turn(turn, history, outcome)
                except (ContainerGone, SandboxUnavailable) as exc:
                    outcome.reason, outcome.error = "error", str(exc)
                except Exception as exc:
                    log.exception("turn failed")
                    outcome.reason, outcome.error = "error", f"internal error: {exc!r}"
            if running.scope.cancelled_caught:
                outcome.reason, outcome.error = "aborted", None
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(turn, message, outcome, running)

    async def _finish(self, turn: Turn, message: AssistantMessage, outcome: Outcome,
                      running: _Running) -> None:
        """Emit the closing events (unless the lease was lost to a process that closes the
        turn itself), wait until they are stored, release the lease, free the session."""
        hold = running.hold
        try:
            running.closing = True
            closed = hold is None or not hold.lost
            if closed:
                self._close(turn, message, outcome)
            stored = True
            try:
                await self.events.flush()
            except StoreError as exc:  # queued, and stored once the store heals
                log.warning("session %s: the end of a turn is not stored yet: %s",
                            turn.session_id, exc)
                stored = False
            if closed and stored:  # after the log: a failing store is told by the log first
                await self._add_usage(turn.session_id, outcome)
            if hold is not None:
                await self.sessions.turns.release(hold, stored=stored)
                if closed and stored:
                    self._task_group.start_soon(self._fold, turn.session_id, hold.lease.after)
        finally:
            self._running.pop(turn.session_id, None)
            running.done.set()

    async def _fold(self, session_id: str, upto: int) -> None:
        """Fold the deltas of the session's turns before the one that began after `upto`
        (see `Store.fold_deltas`). Only an optimization: a store that fails is logged, and
        what was not folded is folded after the session's next turn."""
        try:
            removed = await self.sessions.store.fold_deltas(session_id, upto=upto)
        except StoreError as exc:
            log.warning("session %s: deltas not folded (tried again after the next turn): %s",
                        session_id, exc)
            return
        if removed:
            log.debug("session %s: %d deltas folded up to seq %d", session_id, removed, upto)

    async def _add_usage(self, session_id: str, outcome: Outcome) -> None:
        """Count the turn's tokens and cost in the session's record (its budget's measure)."""
        if outcome.tokens.total == 0 and outcome.cost == 0:
            return
        try:
            await self.sessions.store.add_usage(session_id, outcome.tokens, outcome.cost)
        except StoreError as exc:
            log.warning("session %s: the turn's usage is not counted: %s", session_id, exc)

    def _close(self, turn: Turn, message: AssistantMessage, outcome: Outcome) -> None:
        if turn.summarize and outcome.reason == "completed":
            if outcome.text.strip():
                part = CompactionPart(id=new_id("prt"), summary=outcome.text)
                self.events.emit(turn.session_id, CompactionEvent, message_id=message.id,
                                 part=part)
            else:
                outcome.reason, outcome.error = "error", "the model gave no summary"
        done = message.model_copy(update={
            "time_completed": now(), "tokens": outcome.tokens, "cost": outcome.cost,
            "finish_reason": outcome.finish, "error": outcome.error,
            "conversation_id": outcome.conversation})
        self.events.emit(turn.session_id, MessageUpdatedEvent, message=done)
        self.events.emit(turn.session_id, TurnEndEvent, message_id=message.id,
                         reason=outcome.reason, error=outcome.error)
        self.events.emit(turn.session_id, SessionStatusEvent, status="idle")

    async def abort(self, session_id: str, *, message_id: str | None = None) -> bool:
        """Cancel the running turn (model stream and tool), only if it is the turn of
        `message_id` when that is given; return once it has ended. False when no such turn
        was running."""
        running = self._running.get(session_id)
        if running is None or (message_id is not None and running.message_id != message_id):
            await self.sessions.get_info(session_id)  # an unknown id is an error, not False
            return False
        running.scope.cancel()
        await running.done.wait()
        return True

    async def aclose(self) -> None:
        """Abort every running turn (each ends with its `turn-end`, stored); drop the
        projections kept in memory."""
        with anyio.CancelScope(shield=True):
            for session_id in list(self._running):
                await self.abort(session_id)
        self.views.clear()

    def forget(self, session_id: str) -> None:
        """Drop what is kept in memory of an ended session (it is read again if need be)."""
        self.views.forget(session_id)

    async def reply(
        self, session_id: str, request_id: str, answer: PermissionAnswerRequest
    ) -> None:
        """Answer a pending permission request (see `PermissionBroker.reply`)."""
        check_text(request_id, "request id")
        if answer.message is not None:
            check_text(answer.message, "message")
        await self.sessions.get_info(session_id)
        try:
            self.broker.reply(session_id, request_id, answer.reply, answer.message)
        except PermissionNotFound:  # it may wait in another process: leave it the answer
            if await open_request(self.sessions.turns, self.events, session_id, "permission",
                                  request_id) is None:
                raise
            await leave_answer(self.events, session_id, "permission", request_id,
                               {"reply": answer.reply, "message": answer.message})

    @contextlib.asynccontextmanager
    async def exclusive(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session as a turn would (here and, through its turn lease, in other
        processes) while the body changes its history; `SessionBusy` while a turn runs (one
        whose `turn-end` is out is waited for, as `_start` does)."""
        await self._closed(session_id)
        if session_id in self._running:
            raise SessionBusy(session_id)
        running = self._running[session_id] = _Running()
        try:
            check_usable(await self.sessions.get_info(session_id))
            await self.events.refresh(session_id)
            hold = await self.sessions.turns.acquire(
                session_id, message_id=new_id("msg"), after=self.events.head(session_id),
                on_lost=running.lost)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self.sessions.turns.release(hold)
        finally:
            del self._running[session_id]
            running.done.set()

    async def answer_question(
        self, session_id: str, request_id: str, answer: QuestionAnswerRequest
    ) -> None:
        """Answer a pending question (see `QuestionBroker.reply`)."""
        check_text(request_id, "request id")
        await self.sessions.get_info(session_id)
        try:
            self.questions.reply(session_id, request_id, answer.answer)
        except QuestionNotFound:  # it may wait in another process: leave it the answer
            request = await open_request(self.sessions.turns, self.events, session_id,
                                         "question", request_id)
            if not isinstance(request, QuestionRequest):
                raise
            check_answer(request, answer.answer)
            await leave_answer(self.events, session_id, "question", request_id,
                               {"answer": answer.answer})

    async def subscribe(
        self, session_id: str, *, after: int = 0, strict: bool = False
    ) -> AsyncIterator[Event]:
        """The session's events after seq `after`, then live ones, for ever; with `strict`, a
        failure to store the session's events raises `StoreError`."""
        await self.sessions.get_info(session_id)
        async for event in self.events.subscribe(session_id, after=after, strict=strict):
            yield event

    async def messages(self, session_id: str, *, after: int = 0, hidden: bool = False
                       ) -> list[Message]:
        """The session's messages; with `after`, only those created after that seq; with
        `hidden`, those reverts hide as well (every message of the log, in order)."""
        await self.sessions.get_info(session_id)  # settles a crashed turn; unknown id: error
        await self.events.flush()
        return (await self.views.current(session_id)).messages(after=after, hidden=hidden)

    async def metrics(self, session_id: str) -> Metrics:
        """What the log adds up to, with the usage of the session's child sessions (each
        child's record counts its own children's in turn)."""
        own = metrics(await self.messages(session_id))
        children = [info for info in await self.sessions.store.list_sessions(include_ended=True)
                    if info.parent_id == session_id and info.depth > 0]
        tokens = sum((child.tokens for child in children), Tokens())
        return own.model_copy(update={"subtask_tokens": tokens,
                                      "subtask_cost": sum(child.cost for child in children)})

    async def _check_subtask(self, session_id: str, agent: str) -> None:
        """`InvalidArgument` unless a subtask of `agent` can start from the session."""
        info = await self.sessions.get_info(session_id)
        if agent != info.agent and agent not in info.config.subagents:
            known = ", ".join(sorted({info.agent, *info.config.subagents}))
            raise InvalidArgument(f"no agent {agent!r} can run a subtask of this session "
                                  f"(its agent and subagents: {known})")
        if info.depth >= info.config.max_depth:
            raise InvalidArgument(f"subtasks may nest {info.config.max_depth} deep: this "
                                  "session cannot start another")

    async def _delegate(self, turn: Turn, delegate: tuple[str, str, str, str | None],
                        outcome: Outcome) -> Outcome:
        """A subtask command's turn: the prompt runs in a child session (a `subtask` part
        names it) and the child's final text is this turn's answer."""
        agent, prompt, name, model = delegate
        try:
            _, text = await self._subtask(turn, agent, prompt, f"/{name}", model=model)
        except ToolError as exc:
            outcome.reason, outcome.error = "error", str(exc)
            return outcome
        self.events.emit(turn.session_id, TextDeltaEvent, message_id=turn.message_id,
                         part_id=new_id("prt"), delta=text)
        outcome.text = text
        return outcome

    async def _subtask(self, turn: Turn, agent: str, prompt: str, description: str, *,
                       model: str | None = None) -> tuple[str, str]:
        """Run `prompt` in a new child session of the subagent `agent` (or of the session's
        own agent, by its name) and wait for its turn; its final text. The child is ended
        afterwards (its record stays readable), and its usage is added to the parent's
        record. `ToolError` when it cannot run or did not complete."""
        parent = await self.sessions.get_info(turn.session_id)
        spec = turn.config.subagents.get(agent)
        if spec is None and agent == parent.agent:
            spec = Subagent(config=parent.config, sandbox=parent.sandbox)
        if spec is None:
            known = ", ".join(sorted(turn.config.subagents)) or "none"
            raise ToolError(f"no subagent named {agent!r} (this session has: {known})")
        if model is not None:
            spec = spec.model_copy(update={"config": spec.config.model_copy(
                update={"model": model})})
        if parent.depth >= turn.config.max_depth:
            raise ToolError(f"subtasks may nest {turn.config.max_depth} deep: this session "
                            "cannot start another")
        child = await self.sessions.create_session(
            agent=agent, title=description or prompt[:60], options=spec.sandbox,
            config=spec.config, parent_id=parent.id, depth=parent.depth + 1)
        part = SubtaskPart(id=new_id("prt"), agent=agent, prompt=prompt,
                           description=description, session_id=child.id)
        self.events.emit(turn.session_id, SubtaskEvent, message_id=turn.message_id, part=part)
        try:
            started = await self.start_turn(child.id, prompt)
            running = self._running.get(child.id)
            if running is not None:
                await running.done.wait()
            answer = next(m for m in await self.messages(child.id, after=started.after)
                          if m.id == started.message_id)
            end = next(e for e in await self.events.history(child.id, after=started.after)
                       if isinstance(e, TurnEndEvent) and e.message_id == started.message_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self.abort(child.id)
                await self.sessions.end(child.id)
                self.forget(child.id)
                done = await self.sessions.get_info(child.id)
                await self._add_usage(parent.id, Outcome("completed", tokens=done.tokens,
                                                         cost=done.cost))
        if end.reason != "completed":
            raise ToolError(f"the subtask in session {child.id} ended {end.reason}"
                            + (f": {end.error}" if end.error else ""))
        return child.id, final_text(answer)

    async def todos(self, session_id: str) -> list[Todo]:
        """The session's todo list, as its last `todo-updated` event left it."""
        await self.sessions.get_info(session_id)
        await self.events.flush()
        return (await self.views.current(session_id)).todos()

    async def update(
        self, session_id: str, *, title: str | None = None,
        permissions: PermissionRules | None = None, config: AgentConfig | None = None,
        archived: bool | None = None, pinned: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> SessionInfo:
        """Change the title, the permission rules, the whole agent config, the flags or the
        metadata; stored, and announced with a `session-updated` event."""
        if title is not None:
            check_text(title, "title")
        info = await self.sessions.get_info(session_id)
        new_config = config or info.config
        check_harness_model(new_config)
        if permissions is not None:
            validate_rules(permissions)
            check_rule_keys(permissions, new_config.tools)
            new_config = new_config.model_copy(update={"permissions": permissions})
        info = await self.sessions.update_info(session_id, title=title, config=new_config,
                                               archived=archived, pinned=pinned,
                                               metadata=metadata)
        await self.events.open(session_id)
        self.events.emit(session_id, SessionUpdatedEvent, config=info.config, title=info.title,
                         archived=info.archived, pinned=info.pinned, metadata=info.metadata)
        return info


def _model_calls(messages: list[Message]) -> int:
    """How many model calls the log shows: one per step started, one more per retry."""
    return sum(isinstance(part, StepStartPart | RetryPart)
               for message in messages for part in message.parts)
