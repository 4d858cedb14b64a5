// The session viewer: the session list, and one session followed live over SSE.
//
// Everything a session holds (text, tool input and output, titles, file names) was written
// by a model or a container and is hostile: it goes into the page with textContent (and
// attribute setters) only, never as HTML. The token is in an HttpOnly cookie this script
// cannot read; the browser sends it with every request (EventSource cannot send a header).
"use strict";

const EVENT_TYPES = [
  "message-created", "message-updated", "text-delta", "reasoning-delta", "tool-start",
  "tool-running", "tool-end", "step-start", "step-finish", "retry", "compaction", "subtask",
  "snapshot", "patch", "reverted", "unreverted", "messages-hidden", "permission-asked",
  "permission-replied", "question-asked", "question-replied", "todo-updated",
  "artifact-created", "session-status", "session-updated", "shell-run", "sandbox-restarted",
  "turn-end", "reset",
];
const TOOL_RANK = { pending: 0, running: 1, completed: 2, error: 2 };
const MAX_SHOWN = 20000; // characters of one tool output shown (the rest is counted)
const ARTIFACT_CAP = 2 ** 40; // the read's size cap: the server streams, the browser saves

const $ = (id) => document.getElementById(id);

// An element with classes and children; strings become text nodes, never markup.
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function clipped(text) {
  const value = String(text ?? "");
  if (value.length <= MAX_SHOWN) return value;
  return value.slice(0, MAX_SHOWN) + `\n… (${value.length - MAX_SHOWN} more characters)`;
}

function sessionPath(id, ...rest) {
  return ["/sessions", encodeURIComponent(id), ...rest].join("/");
}

class LoggedOut extends Error {}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.replace("/viewer/login");
    throw new LoggedOut("logged out");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not our error body */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function note(text) {
  $("activity").prepend(el("li", "", `${new Date().toLocaleTimeString()} ${text}`));
}

// --- the session list ------------------------------------------------------------------------

let listTimer = null;

async function loadSessions() {
  const ended = $("include-ended").checked ? "?include_ended=true" : "";
  const sessions = await api("GET", "/sessions" + ended);
  const list = $("session-list");
  list.replaceChildren(...sessions.map((info) => {
    const button = el("button", "session-item", el("span", "title", info.title || "(untitled)"),
      el("span", `status status-${info.status}`, info.status),
      el("span", "meta", `${info.agent} · ${info.id}`));
    button.type = "button";
    button.dataset.sessionId = info.id;
    if (current && current.id === info.id) button.classList.add("selected");
    button.addEventListener("click", () => { window.location.hash = info.id; });
    return el("li", "", button);
  }));
}

function refreshSoon() {
  if (listTimer !== null) return;
  listTimer = setTimeout(() => {
    listTimer = null;
    loadSessions().catch(showError);
  }, 300);
}

function followAll() {
  const source = new EventSource("/events");
  for (const kind of ["session-status", "session-updated", "message-created"]) {
    source.addEventListener(kind, refreshSoon);
  }
}

// --- one session -----------------------------------------------------------------------------

let current = null;

class SessionView {
  constructor(id) {
    this.id = id;
    this.messages = new Map(); // id -> {info, parts: Map(id -> part), end}
    this.order = [];
    this.seeded = new Map(); // part id -> text as GET /messages gave it
    this.streamed = new Map(); // part id -> text rebuilt from the deltas
    this.hidden = new Set();
    this.permissions = new Map();
    this.questions = new Map();
    this.todos = [];
    this.artifacts = new Map();
    this.dirty = new Set();
    this.nodes = new Map();
    this.frame = null;
    this.source = null;
    this.closed = false;
  }

  async open() {
    const [info, messages] = await Promise.all([
      api("GET", sessionPath(this.id)), api("GET", sessionPath(this.id, "messages"))]);
    if (this.closed) return;
    this.showInfo(info.title, info.status);
    for (const message of messages) this.seed(message);
    this.render();
    this.loadArtifacts();
    api("GET", sessionPath(this.id, "todos"))
      .then((todos) => { this.todos = todos; this.renderTodos(); }).catch(showError);
    this.follow();
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
  }

  // The log from its start: it rebuilds what GET /messages showed (a part's text shows the
  // longer of the two, never both), then goes on live; a reconnect resumes at Last-Event-ID.
  follow() {
    const source = new EventSource(sessionPath(this.id, "events"));
    this.source = source;
    source.addEventListener("open", () => setConnection("live", true));
    source.addEventListener("error", (event) => {
      if (event.data) note(`stream error: ${event.data}`);
      setConnection(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting",
        false);
    });
    for (const kind of EVENT_TYPES) {
      source.addEventListener(kind, (event) => this.apply(JSON.parse(event.data)));
    }
  }

  showInfo(title, status) {
    $("session-title").textContent = title || "(untitled)";
    $("session-id").textContent = this.id;
    if (!status) return;
    $("session-status").textContent = status;
    $("session-status").className = `status status-${status}`;
    for (const item of document.querySelectorAll(".session-item")) {
      if (item.dataset.sessionId !== this.id) continue;
      const badge = item.querySelector(".status");
      badge.textContent = status;
      badge.className = `status status-${status}`;
    }
  }

  message(id, info) {
    let entry = this.messages.get(id);
    if (!entry) {
      entry = { info: info || { id, role: "assistant" }, parts: new Map(), end: null };
      this.messages.set(id, entry);
      this.order.push(id);
    } else if (info) {
      entry.info = info;
    }
    this.dirty.add(id);
    return entry;
  }

  seed(message) {
    const entry = this.message(message.id, message);
    for (const part of message.parts || []) {
      if (part.type === "text" || part.type === "reasoning") this.seeded.set(part.id, part.text);
      this.putPart(entry, part);
    }
  }

  putPart(entry, part) {
    const known = entry.parts.get(part.id);
    if (known && part.type === "tool" && known.type === "tool"
        && TOOL_RANK[known.state.status] > TOOL_RANK[part.state.status]) {
      return; // a replayed earlier state of a call already shown further on
    }
    entry.parts.set(part.id, part);
  }

  delta(event, type) {
    const entry = this.message(event.message_id);
    const text = (this.streamed.get(event.part_id) || "") + event.delta;
    this.streamed.set(event.part_id, text);
    if (!entry.parts.has(event.part_id)) {
      entry.parts.set(event.part_id, { type, id: event.part_id, text: "" });
    }
  }

  text(part) {
    const streamed = this.streamed.get(part.id) || "";
    const seeded = this.seeded.get(part.id) || part.text || "";
    return streamed.length >= seeded.length ? streamed : seeded;
  }

  apply(event) {
    const handler = HANDLERS[event.type];
    if (handler) handler(this, event);
    this.schedule();
  }

  reset(event) {
    this.messages.clear();
    this.order = [];
    this.nodes.clear();
    this.seeded.clear();
    this.streamed.clear();
    for (const message of event.messages) {
      this.seed(message);
      for (const part of message.parts || []) {
        if (part.type === "text" || part.type === "reasoning") {
          this.streamed.set(part.id, part.text);
        }
      }
    }
    this.todos = event.todos;
    $("messages").replaceChildren();
    this.renderTodos();
  }

  // After a revert (or its undo) the projection says which messages are shown.
  async reloadVisible() {
    const shown = new Set((await api("GET", sessionPath(this.id, "messages"))).map((m) => m.id));
    this.hidden = new Set(this.order.filter((id) => !shown.has(id)));
    for (const id of this.order) this.dirty.add(id);
    this.schedule();
  }

  async loadArtifacts() {
    try {
      for (const artifact of await api("GET", sessionPath(this.id, "artifacts"))) {
        this.artifacts.set(artifact.key, artifact.size);
      }
    } catch (error) {
      if (!(error instanceof LoggedOut)) note(`artifacts: ${error.message}`);
    }
    this.renderArtifacts();
  }

  schedule() {
    if (this.frame === null) {
      this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
    }
  }

  render() {
    if (this.closed) return;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    for (const id of this.order) {
      if (!this.dirty.has(id)) continue;
      const node = renderMessage(this, this.messages.get(id));
      node.hidden = this.hidden.has(id);
      const old = this.nodes.get(id);
      if (old) old.replaceWith(node); else box.append(node);
      this.nodes.set(id, node);
    }
    this.dirty.clear();
    if (atBottom) box.scrollTop = box.scrollHeight;
    this.renderRequests();
    this.renderTodos();
    this.renderArtifacts();
  }

  renderRequests() {
    const items = [...this.permissions.values()].map((request) => renderPermission(this, request));
    items.push(...[...this.questions.values()].map((request) => renderQuestion(this, request)));
    $("requests").replaceChildren(...items);
  }

  renderTodos() {
    $("todos").replaceChildren(...this.todos.map((todo) =>
      el("li", `todo todo-${todo.status}`, el("span", "todo-status", todo.status),
        ` ${todo.content}`)));
  }

  renderArtifacts() {
    const keys = [...this.artifacts.keys()].sort();
    $("artifacts").replaceChildren(...keys.map((key) => {
      const link = el("a", "artifact", key);
      link.href = sessionPath(this.id, "artifacts",
        key.split("/").map(encodeURIComponent).join("/")) + `?max_bytes=${ARTIFACT_CAP}`;
      link.download = key.split("/").pop() || "artifact";
      return el("li", "", link, el("span", "size", ` ${this.artifacts.get(key)} bytes`));
    }));
  }

  async answer(path, body, what) {
    try {
      await api("POST", sessionPath(this.id, ...path), body);
    } catch (error) {
      if (!(error instanceof LoggedOut)) note(`${what} failed: ${error.message}`);
    }
  }
}

const HANDLERS = {
  "message-created": (view, event) => view.seed(event.message),
  "message-updated": (view, event) => {
    const entry = view.message(event.message.id, { ...event.message, parts: [] });
    for (const part of event.message.parts || []) view.putPart(entry, part);
  },
  "text-delta": (view, event) => view.delta(event, "text"),
  "reasoning-delta": (view, event) => view.delta(event, "reasoning"),
  "turn-end": (view, event) => {
    view.message(event.message_id).end = { reason: event.reason, error: event.error };
  },
  "permission-asked": (view, event) => view.permissions.set(event.request.id, event.request),
  "permission-replied": (view, event) => {
    view.permissions.delete(event.request_id);
    note(`permission ${event.request_id}: ${event.reply}`);
  },
  "question-asked": (view, event) => view.questions.set(event.request.id, event.request),
  "question-replied": (view, event) => view.questions.delete(event.request_id),
  "todo-updated": (view, event) => { view.todos = event.todos; },
  "artifact-created": (view, event) => {
    view.artifacts.set(event.artifact.key, event.artifact.size);
  },
  "session-status": (view, event) => view.showInfo($("session-title").textContent, event.status),
  "session-updated": (view, event) => view.showInfo(event.title, null),
  "shell-run": (view, event) => note(`$ ${event.command} → exit ${event.exit_code}`),
  "sandbox-restarted": (view, event) => note(`sandbox restarted: ${event.reason}`),
  "reverted": (view) => view.reloadVisible().catch(showError),
  "unreverted": (view) => view.reloadVisible().catch(showError),
  "messages-hidden": (view) => view.reloadVisible().catch(showError),
  "reset": (view, event) => view.reset(event),
};
for (const kind of ["tool-start", "tool-running", "tool-end", "step-start", "step-finish",
  "retry", "compaction", "subtask", "snapshot", "patch"]) {
  HANDLERS[kind] = (view, event) => view.putPart(view.message(event.message_id), event.part);
}

// --- rendering a message ---------------------------------------------------------------------

function renderMessage(view, entry) {
  const info = entry.info;
  const head = el("div", "message-head", el("span", "role", info.role));
  if (info.model) head.append(el("span", "model", info.model));
  if (info.tokens) {
    head.append(el("span", "tokens", `${info.tokens.input} in · ${info.tokens.output} out`));
  }
  const node = el("article", `message message-${info.role}`, head);
  node.dataset.messageId = info.id;
  for (const part of entry.parts.values()) {
    const shown = renderPart(view, part);
    if (shown) node.append(shown);
  }
  if (info.error) node.append(el("p", "message-error", info.error));
  if (entry.end) {
    const end = el("p", `turn-end turn-end-${entry.end.reason}`, `turn-end: ${entry.end.reason}`);
    if (entry.end.error) end.append(` (${entry.end.error})`);
    node.append(end);
  }
  return node;
}

function renderPart(view, part) {
  switch (part.type) {
    case "text":
      return el("div", "part-text", view.text(part));
    case "reasoning": {
      const details = el("details", "part-reasoning", el("summary", "", "reasoning"),
        el("div", "reasoning-text", view.text(part)));
      details.open = true;
      return details;
    }
    case "tool":
      return renderTool(part);
    case "step-finish":
      return el("div", "part-step", `step: ${part.reason}`);
    case "retry":
      return el("div", "part-retry", `retry ${part.attempt}: ${part.error}`);
    case "compaction":
      return el("div", "part-compaction", `compacted: ${part.summary}`);
    case "subtask":
      return el("div", "part-subtask", `subtask (${part.agent}): ${part.description || part.prompt}`);
    case "patch":
      return part.files.length ? el("div", "part-patch", `changed: ${part.files.join(", ")}`) : null;
    case "file":
      return el("div", "part-file", `file: ${part.path}`);
    default:
      return null;
  }
}

function renderTool(part) {
  const state = part.state;
  const head = el("div", "tool-head", el("span", "tool-name", part.tool),
    el("span", `tool-status tool-${state.status}`, state.status));
  if (state.title) head.append(el("span", "tool-title", state.title));
  const node = el("div", "part-tool", head,
    el("pre", "tool-input", clipped(JSON.stringify(state.input, null, 2))));
  if (state.output !== null && state.output !== undefined) {
    node.append(el("pre", "tool-output", clipped(state.output)));
  }
  if (state.error) node.append(el("pre", "tool-error", clipped(state.error)));
  return node;
}

function renderPermission(view, request) {
  const node = el("div", "request permission",
    el("div", "request-head", `Permission: ${request.tool}`),
    el("pre", "patterns", request.patterns.join("\n")));
  if (request.always.length) {
    node.append(el("div", "always", `"always" allows: ${request.always.join(", ")}`));
  }
  const message = el("input", "reject-message");
  message.placeholder = "message for reject (optional)";
  const buttons = el("div", "buttons");
  for (const reply of ["once", "always", "reject"]) {
    const button = el("button", `reply reply-${reply}`, reply);
    button.type = "button";
    button.addEventListener("click", () => {
      button.disabled = true;
      const body = { reply };
      if (reply === "reject" && message.value.trim()) body.message = message.value.trim();
      view.answer(["permissions", request.id], body, "reply");
    });
    buttons.append(button);
  }
  node.append(buttons, message);
  return node;
}

function renderQuestion(view, request) {
  const node = el("div", "request question",
    el("div", "request-head", "Question"), el("p", "question-text", request.question));
  const send = (answer) => view.answer(["questions", request.id], { answer }, "answer");
  const buttons = el("div", "buttons");
  for (const option of request.options) {
    const button = el("button", "option", option);
    button.type = "button";
    button.addEventListener("click", () => send(option));
    buttons.append(button);
  }
  node.append(buttons);
  if (request.allow_custom || !request.options.length) {
    const form = el("form", "custom");
    const input = el("input", "custom-answer");
    input.placeholder = "your answer";
    const button = el("button", "", "Answer");
    button.type = "submit";
    form.append(input, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.trim()) send(input.value.trim());
    });
    node.append(form);
  }
  return node;
}

// --- the page --------------------------------------------------------------------------------

function setConnection(text, live) {
  const node = $("connection");
  node.textContent = text;
  node.classList.toggle("live", live);
}

function showError(error) {
  if (!(error instanceof LoggedOut)) note(`error: ${error.message}`);
}

function openFromHash() {
  const id = decodeURIComponent(window.location.hash.slice(1));
  if (current) current.close();
  current = null;
  for (const item of document.querySelectorAll(".session-item")) {
    item.classList.toggle("selected", item.dataset.sessionId === id);
  }
  $("session").hidden = !id;
  $("side").hidden = !id;
  $("empty").hidden = Boolean(id);
  $("messages").replaceChildren();
  $("requests").replaceChildren();
  $("activity").replaceChildren();
  setConnection("not connected", false);
  if (!id) return;
  current = new SessionView(id);
  current.open().catch(showError);
}

function start() {
  $("refresh").addEventListener("click", () => loadSessions().catch(showError));
  $("include-ended").addEventListener("change", () => loadSessions().catch(showError));
  $("prompt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!current || !prompt.trim()) return;
    $("prompt").value = "";
    current.answer(["turns"], { prompt }, "send");
  });
  $("abort").addEventListener("click", () => {
    if (current) current.answer(["abort"], undefined, "abort");
  });
  window.addEventListener("hashchange", openFromHash);
  loadSessions().then(() => { followAll(); openFromHash(); }).catch(showError);
}

document.addEventListener("DOMContentLoaded", start);
