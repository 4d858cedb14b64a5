# The helper's commands and its reaper (see `_helper.py`). Runs in the container: python3 >=
# 3.6, standard library only.
import math
import os
import selectors
import signal
import subprocess
import threading
import time

from _helper_frames import (
    CHUNK,
    DONE,
    ERR,
    OUT,
    BadRequest,
    fail,
    field,
    os_error_kind,
    path_field,
    send,
    send_json,
)

DRAIN_IDLE = 0.05  # once a command has exited, how long its leftover children may stay silent
KILL_FOR = 1.0  # seconds a timed-out group is killed again and again until it is empty
PIPE_GRACE = 1.0  # after the kill, how long a process outside the group may hold the pipes
COMMAND_OOM_SCORE_ADJ = b"500"  # the OOM killer takes a command before the helper
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"

running = {}  # request id -> Popen (None until spawned), for CANCEL and clean-up at EOF
cancels = set()  # request ids of commands in `running` that were cancelled


# --- children: one reaper for all ----------------------------------------------------------


class Reaper(object):
    """Reaps every child, and as PID 1 every orphan too, and hands exit statuses on.

    Nothing else may wait for a child (no `Popen.wait`/`poll`): a pid the reaper already
    reaped could be reused by another process by then. `spawn` registers the pid under the
    lock that the reaper takes before handing a status on, so a child that exits at once is
    not lost.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.waiters = {}  # pid -> Exit
        self.spawned = threading.Event()

    def spawn(self, argv, **options):
        with self.lock:
            proc = subprocess.Popen(argv, **options)
            done = self.waiters[proc.pid] = Exit()
        self.spawned.set()
        return proc, done

    def run(self):
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # No child now; as PID 1 an orphan may become ours at any moment.
                self.spawned.wait(0.5)
                self.spawned.clear()
                continue
            with self.lock:
                done = self.waiters.pop(pid, None)
            if done is not None:
                done.set(status)


class Exit(object):
    """The exit status of one child, once the reaper has it."""

    def __init__(self):
        self.event = threading.Event()
        self.code = None

    def set(self, status):
        self.code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else (
            os.WEXITSTATUS(status))
        self.event.set()


REAPER = Reaper()


# --- commands ------------------------------------------------------------------------------


def kill_group(pgid):
    """SIGKILL the group again and again until it is empty, for at most KILL_FOR seconds: a
    dying fork bomb keeps forking. Its zombies leave the group once the reaper (ours, or the
    container's init) has them. A process that left the group (`setsid`) is out of reach."""
    end = time.monotonic() + KILL_FOR
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # ESRCH: the group is empty
            return
        if time.monotonic() >= end:
            return
        time.sleep(0.01)


def prefer_for_oom(pid):
    # The sandbox user may lower it back to 0, never below the helper's own score.
    try:
        fd = os.open("/proc/%d/oom_score_adj" % pid, os.O_WRONLY)
        try:
            os.write(fd, COMMAND_OOM_SCORE_ADJ)
        finally:
            os.close(fd)
    except OSError:
        pass


def exec_env(req):
    env = dict(os.environ)
    for key, value in field(req, "env", (dict,), {}).items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise BadRequest("env entry %r=%r is not usable" % (key, value))
        env[key] = value
    return env


def exec_limits(req):
    timeout = field(req, "timeout", (int, float))
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise BadRequest("timeout must be a finite number of seconds >= 0, not %r" % timeout)
    cap = field(req, "max_output", (int,), 1 << 20)
    if cap < 0:
        raise BadRequest("max_output must be >= 0, not %r" % cap)
    return timeout, cap


def pump(rid, proc, done, deadline, cap):
    """Forward the command's output, at most `cap` bytes a stream, until it has exited and its
    pipes closed (or stayed quiet for DRAIN_IDLE). Past `deadline`, or once cancelled, kill its
    group. Returns (timed_out, truncated)."""
    sel = selectors.DefaultSelector()
    sent = {OUT: 0, ERR: 0}
    sel.register(proc.stdout, selectors.EVENT_READ, OUT)
    sel.register(proc.stderr, selectors.EVENT_READ, ERR)
    truncated = timed_out = False
    stop_at = idle_since = None
    try:
        while True:
            now = time.monotonic()
            late = deadline is not None and now >= deadline
            if stop_at is None and (rid in cancels or late):
                timed_out = rid not in cancels
                kill_group(proc.pid)
                stop_at = time.monotonic() + PIPE_GRACE
            elif stop_at is not None and now >= stop_at:
                break  # something outside the group holds the pipes open
            tick = 0.05 if deadline is None or stop_at else max(0.0, min(0.05, deadline - now))
            if not sel.get_map():  # both pipes closed: only the exit is left to wait for
                if done.event.wait(tick):
                    break
                continue
            events = sel.select(tick)
            for key, _ in events:
                data = os.read(key.fd, CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                room = cap - sent[key.data]
                if len(data) > room:
                    truncated = True
                    data = data[:max(room, 0)]
                if data:
                    sent[key.data] += len(data)
                    send(key.data, rid, data)
            if events:
                idle_since = None
            elif done.event.is_set():
                # The command exited but a child of it still holds a pipe: stop once it is quiet.
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= DRAIN_IDLE:
                    break
    finally:
        sel.close()
    return timed_out, truncated


def run_exec(rid, req):
    try:
        exec_command(rid, req)
    finally:
        running.pop(rid, None)
        cancels.discard(rid)


def exec_command(rid, req):
    cmd = field(req, "cmd", (str,))
    if cmd is None:
        raise BadRequest("cmd is missing")
    cwd, env = path_field(req, "cwd", optional=True), exec_env(req)
    timeout, cap = exec_limits(req)
    if rid in cancels:  # cancelled before it began (sent to a paused container, say)
        return
    started = time.monotonic()
    try:
        proc, done = REAPER.spawn(
            [SHELL, "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
    except OSError as exc:
        fail(rid, os_error_kind(exc), "cannot start command: %s" % exc)
        return
    except ValueError as exc:  # a NUL in the command or its environment
        raise BadRequest(str(exc)) from None
    prefer_for_oom(proc.pid)
    running[rid] = proc
    try:
        timed_out, truncated = pump(rid, proc, done, None if timeout is None
                                    else started + timeout, cap)
    except BaseException:
        kill_group(proc.pid)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    done.event.wait(KILL_FOR)
    code = 128 + signal.SIGKILL if done.code is None else done.code
    proc.returncode = code  # so that Popen never waits for a pid the reaper may have reused
    cancelled = rid in cancels
    send_json(DONE, rid, {
        "exit_code": 124 if timed_out else code, "timed_out": timed_out,
        "truncated": truncated, "cancelled": cancelled,
        "duration": time.monotonic() - started})


def expect(rid):
    """Note a command about to start, so that a cancel coming before its thread runs is kept."""
    running[rid] = None


def cancel_command(rid):
    if rid not in running:
        return
    cancels.add(rid)  # seen by the command's thread, even one not yet started
    proc = running.get(rid)
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # once here; its thread kills until empty
        except OSError:
            pass
