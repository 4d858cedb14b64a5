"""Measure sandbox_sessions against the raw Docker SDK floor and llm-sandbox, op by op, in one run.

Three implementations run the same operations against the same image:

* ``raw``: ``docker.APIClient`` low-level calls with a hardened host config. Nothing is
  cheaper through the Docker API, so this is the floor every library pays at least.
* ``llm_sandbox``: the PyPI package ``llm-sandbox`` (Docker backend), with the same hardening
  passed through ``runtime_configs`` and its language environment setup skipped (offline).
* ``ours``: ``sandbox_sessions`` through its sync facade ``SandboxClient``. It is imported
  lazily, so ``--only raw,llm_sandbox`` works before (or without) the library.

Run ``python benchmarks/bench_sandbox.py --help``; ``benchmarks/README.md`` explains each number.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, ClassVar, Generic, TypeVar

import docker
import docker.errors
import docker.utils

IMPLS: tuple[str, ...] = ("raw", "llm_sandbox", "ours")
LABEL = "sandbox-sessions-bench"
"""Every container that `raw` and `llm_sandbox` make carries this label (value: the run id)."""
DEFAULT_IMAGES = ("sandbox-sessions/sandbox:latest", "sandbox-sessions/sandbox:dev")
MIB = 1024 * 1024
BIG_OUTPUT_BYTES = 50 * MIB
BIG_OUTPUT_COMMAND = f"head -c {BIG_OUTPUT_BYTES} /dev/zero"
WORKDIR = "/workspace"
USER = "1000:1000"
# The limits of sandbox_sessions' SandboxOptions defaults, applied to raw and llm_sandbox alike.
MEM_LIMIT = "1g"
NANO_CPUS = 1_000_000_000
PIDS_LIMIT = 512
POOL_SIZE = 32
"""HTTP connections the shared Docker clients keep: more than the concurrent sessions."""


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Op:
    key: str
    label: str
    unit: str  # "s" or "bytes"


OPS: tuple[Op, ...] = (
    Op("ready", "session ready (create -> first shell result)", "s"),
    Op("shell_true", 'shell("true") round trip', "s"),
    Op("put_1mb", "put 1 MiB file", "s"),
    Op("get_1mb", "get 1 MiB file", "s"),
    Op("put_50mb", "put 50 MiB file", "s"),
    Op("get_50mb", "get 50 MiB file", "s"),
    Op("output_50mb_wall", "50 MiB output, as kept by default: wall time", "s"),
    Op("output_50mb_tracemalloc", "50 MiB output, as kept by default: tracemalloc", "bytes"),
    Op("output_50mb_rss", "50 MiB output, as kept by default: RSS growth", "bytes"),
    Op("output_50mb_all_wall", "50 MiB output, all of it kept: wall time", "s"),
    Op("output_50mb_all_tracemalloc", "50 MiB output, all of it kept: tracemalloc", "bytes"),
    Op("output_50mb_all_rss", "50 MiB output, all of it kept: RSS growth", "bytes"),
    Op("end", "end (remove) latency", "s"),
    Op("concurrent_ready", "N sessions at once: all answered shell", "s"),
    Op("concurrent_end", "N sessions at once: all ended", "s"),
)
OP_BY_KEY = {op.key: op for op in OPS}


@dataclass
class Stat:
    """The samples of one operation for one implementation, or the error that stopped it."""

    samples: list[float] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p50(self) -> float | None:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float | None:
        return percentile(self.samples, 90)

    def as_json(self) -> dict[str, Any]:
        return {
            "n": len(self.samples),
            "p50": self.p50,
            "p90": self.p90,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "samples": self.samples,
            "error": self.error,
            **({"extra": self.extra} if self.extra else {}),
        }


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (the median for 50); None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class ShellOut:
    exit_code: int
    stdout_bytes: int
    """Bytes (or characters, for APIs that return text) of stdout the implementation kept."""
    truncated: bool = False


H = TypeVar("H")


class Impl(ABC, Generic[H]):
    """One way of driving sandboxes. Every method but setup/teardown may run in many threads."""

    name: ClassVar[str]

    def __init__(self, image: str, run_id: str, options: argparse.Namespace) -> None:
        self.image = image
        self.run_id = run_id
        self.options = options

    def setup(self) -> None:
        """Make clients; not timed."""

    def teardown(self) -> None:
        """Close clients; not timed."""

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def open(self) -> H:
        """Create a session and return once its first `shell("true")` has answered."""

    @abstractmethod
    def shell(self, handle: H, command: str) -> ShellOut: ...

    always_keeps_all: ClassVar[bool] = False
    """True when `shell` keeps all output anyway, so `shell_keep_all` is the same call."""

    def shell_keep_all(self, handle: H, command: str) -> ShellOut:
        """Like `shell`, but keeping every byte of stdout in this process."""
        return self.shell(handle, command)

    @abstractmethod
    def put(self, handle: H, path: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, handle: H, path: str) -> bytes: ...

    @abstractmethod
    def close(self, handle: H) -> None:
        """End the session and remove its container."""


def docker_kwargs() -> dict[str, Any]:
    return dict(docker.utils.kwargs_from_env())


class RawDocker(Impl[str]):
    """The floor: `docker.APIClient` calls, nothing more. A handle is a container id."""

    name = "raw"

    def setup(self) -> None:
        self.api = docker.APIClient(version="auto", max_pool_size=POOL_SIZE, **docker_kwargs())
        self.host_config = self.api.create_host_config(
            init=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode="none",
            pids_limit=PIDS_LIMIT,
            mem_limit=MEM_LIMIT,
            nano_cpus=NANO_CPUS,
        )

    def teardown(self) -> None:
        self.api.close()

    def version(self) -> str:
        return f"docker SDK {docker.__version__}"

    def open(self) -> str:
        created = self.api.create_container(
            self.image,
            user=USER,
            working_dir=WORKDIR,
            labels={LABEL: self.run_id},
            host_config=self.host_config,
        )
        cid: str = created["Id"]
        try:
            self.api.start(cid)
            out = self.shell(cid, "true")
            if out.exit_code != 0:
                raise RuntimeError(f"shell('true') exited {out.exit_code}")
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.remove_container(cid, force=True)
            raise
        return cid

    def shell(self, handle: str, command: str) -> ShellOut:
        exec_id: str = self.api.exec_create(handle, ["/bin/sh", "-c", command])["Id"]
        received = 0
        # Streamed and only counted: the floor keeps nothing.
        for stdout, _stderr in self.api.exec_start(exec_id, stream=True, demux=True):
            if stdout:
                received += len(stdout)
        exit_code = self.api.exec_inspect(exec_id)["ExitCode"]
        return ShellOut(exit_code=int(exit_code), stdout_bytes=received)

    def shell_keep_all(self, handle: str, command: str) -> ShellOut:
        exec_id: str = self.api.exec_create(handle, ["/bin/sh", "-c", command])["Id"]
        kept = bytearray()  # grows in place: the least memory that keeps it all
        for stdout, _stderr in self.api.exec_start(exec_id, stream=True, demux=True):
            if stdout:
                kept += stdout
        exit_code = self.api.exec_inspect(exec_id)["ExitCode"]
        return ShellOut(exit_code=int(exit_code), stdout_bytes=len(kept))

    def put(self, handle: str, path: str, data: bytes) -> None:
        folder, _, name = path.rpartition("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.uid = info.gid = 1000
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not self.api.put_archive(handle, folder or "/", buffer.getvalue()):
            raise RuntimeError(f"put_archive refused {path}")

    def get(self, handle: str, path: str) -> bytes:
        stream, _stat = self.api.get_archive(handle, path)
        archive = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise RuntimeError(f"{path} is not a regular file")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise RuntimeError(f"{path} has no content")
            return extracted.read()

    def close(self, handle: str) -> None:
        self.api.remove_container(handle, force=True)


class LlmSandbox(Impl[Any]):
    """llm-sandbox's Docker backend through its public API. A handle is its session object."""

    name = "llm_sandbox"
    always_keeps_all = True

    def setup(self) -> None:
        # Offline: never let pip reach for an index, and never run llm-sandbox's environment
        # setup (venv + `pip install --upgrade pip`), which needs the network.
        os.environ.setdefault("PIP_NO_INDEX", "1")
        import llm_sandbox

        self.module = llm_sandbox
        self.client = docker.DockerClient(
            version="auto", max_pool_size=POOL_SIZE, **docker_kwargs()
        )
        self.host_dir = tempfile.mkdtemp(prefix="bench-llm-sandbox-")
        self._sources: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def teardown(self) -> None:
        self.client.close()
        for name in os.listdir(self.host_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.host_dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.host_dir)

    def version(self) -> str:
        return f"llm-sandbox {metadata.version('llm-sandbox')}"

    def runtime_configs(self) -> dict[str, Any]:
        """The same hardening as raw, as llm-sandbox's `runtime_configs` (fresh: it mutates it)."""
        return {
            "user": self.options.llm_sandbox_user,
            "working_dir": WORKDIR,
            "labels": {LABEL: self.run_id},
            "environment": {"PIP_NO_INDEX": "1"},
            "init": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "network_mode": "none",
            "pids_limit": PIDS_LIMIT,
            "mem_limit": MEM_LIMIT,
            "nano_cpus": NANO_CPUS,
        }

    def open(self) -> Any:
        session = self.module.SandboxSession(
            backend=self.module.SandboxBackend.DOCKER,
            client=self.client,
            lang="python",
            image=self.image,
            keep_template=True,  # never remove the image on close
            skip_environment_setup=True,  # no venv, no pip: works offline
            workdir=WORKDIR,
            runtime_configs=self.runtime_configs(),
            verbose=False,
        )
        session.open()
        try:
            out = self.shell(session, "true")
            if out.exit_code != 0:
                raise RuntimeError(f"execute_command('true') exited {out.exit_code}")
        except BaseException:
            with contextlib.suppress(Exception):
                session.close()
            raise
        return session

    def shell(self, handle: Any, command: str) -> ShellOut:
        result = handle.execute_command(command)
        stdout: str = result.stdout or ""
        return ShellOut(exit_code=int(result.exit_code), stdout_bytes=len(stdout))

    def _source_file(self, data: bytes) -> str:
        """llm-sandbox copies from host paths: each payload is written once, untimed."""
        with self._lock:
            existing = self._sources.get(data)
            if existing is None:
                existing = os.path.join(self.host_dir, f"src-{len(self._sources)}.bin")
                with open(existing, "wb") as out:
                    out.write(data)
                os.chmod(existing, 0o644)
                self._sources[data] = existing
            return existing

    def prepare_put(self, data: bytes) -> None:
        self._source_file(data)

    def put(self, handle: Any, path: str, data: bytes) -> None:
        handle.copy_to_runtime(self._source_file(data), path)

    def get(self, handle: Any, path: str) -> bytes:
        with self._lock:
            self._counter += 1
            dest = os.path.join(self.host_dir, f"dest-{self._counter}.bin")
        try:
            handle.copy_from_runtime(path, dest)
            with open(dest, "rb") as result:
                return result.read()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(dest)

    def close(self, handle: Any) -> None:
        handle.close()


class Ours(Impl[Any]):
    """sandbox_sessions through its sync facade. Imported here, so a broken library is one row."""

    name = "ours"

    def setup(self) -> None:
        library = importlib.import_module("sandbox_sessions")
        self.module = library
        self.client: Any = library.SandboxClient()
        self.client.__enter__()
        try:
            self.agent: Any = self.client.agent(
                "bench", sandbox=library.SandboxOptions(image=self.image)
            )
        except BaseException:
            self.client.__exit__(None, None, None)
            raise

    def teardown(self) -> None:
        self.client.__exit__(None, None, None)

    def version(self) -> str:
        try:
            return f"sandbox-sessions {metadata.version('sandbox-sessions')}"
        except metadata.PackageNotFoundError:
            return "sandbox-sessions (not installed: imported from the work tree)"

    def open(self) -> Any:
        session = self.agent.create_session(title="bench")
        try:
            out = self.shell(session, "true")
            if out.exit_code != 0:
                raise RuntimeError(f"shell('true') exited {out.exit_code}")
        except BaseException:
            with contextlib.suppress(Exception):
                session.end()
            raise
        return session

    def shell(self, handle: Any, command: str) -> ShellOut:
        result = handle.shell(command)
        stdout: str = result.stdout
        return ShellOut(
            exit_code=int(result.exit_code),
            stdout_bytes=len(stdout),
            truncated=bool(result.truncated),
        )

    def shell_keep_all(self, handle: Any, command: str) -> ShellOut:
        result = handle.shell(command, max_output=2 * BIG_OUTPUT_BYTES)
        stdout: str = result.stdout
        return ShellOut(
            exit_code=int(result.exit_code),
            stdout_bytes=len(stdout),
            truncated=bool(result.truncated),
        )

    def put(self, handle: Any, path: str, data: bytes) -> None:
        handle.put_file(path, data)

    def get(self, handle: Any, path: str) -> bytes:
        data: bytes = handle.get_file_bytes(path)
        return data

    def close(self, handle: Any) -> None:
        handle.end()


IMPL_CLASSES: dict[str, type[Impl[Any]]] = {cls.name: cls for cls in (RawDocker, LlmSandbox, Ours)}


# --------------------------------------------------------------------------- measuring


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def op_guard(stats: dict[str, Stat], *keys: str) -> Iterator[None]:
    """Record an exception as the error of every op in `keys`, and carry on."""
    try:
        yield
    except Exception as exc:
        for key in keys:
            stats[key].error = stats[key].error or describe(exc)
        say(f"    error in {'/'.join(keys)}: {describe(exc)}")


def bench_ready_end(impl: Impl[Any], stats: dict[str, Stat], rounds: int, warmup: int) -> None:
    for _ in range(warmup):
        impl.close(impl.open())
    for _ in range(rounds):
        start = time.perf_counter()
        handle = impl.open()
        stats["ready"].samples.append(time.perf_counter() - start)
        try:
            start = time.perf_counter()
            impl.close(handle)
            stats["end"].samples.append(time.perf_counter() - start)
        except Exception as exc:
            stats["end"].error = stats["end"].error or describe(exc)


def file_round(impl: Impl[Any], handle: Any, path: str, payload: bytes) -> tuple[float, float]:
    """Put `payload` at `path`, read it back; the two durations. Checked, untimed."""
    start = time.perf_counter()
    impl.put(handle, path, payload)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    got = impl.get(handle, path)
    get_s = time.perf_counter() - start
    if got != payload:
        raise RuntimeError(f"read back {len(got)} bytes unlike the {len(payload)} written")
    return put_s, get_s


def bench_in_session(
    impl: Impl[Any], stats: dict[str, Stat], rounds: int, shell_iters: int
) -> None:
    handle = impl.open()
    try:
        with op_guard(stats, "shell_true"):
            for _ in range(3):
                impl.shell(handle, "true")
            for _ in range(shell_iters):
                start = time.perf_counter()
                out = impl.shell(handle, "true")
                stats["shell_true"].samples.append(time.perf_counter() - start)
                if out.exit_code != 0:
                    raise RuntimeError(f"shell('true') exited {out.exit_code}")
        for size_mib, put_key, get_key in ((1, "put_1mb", "get_1mb"), (50, "put_50mb", "get_50mb")):
            with op_guard(stats, put_key, get_key):
                payload = os.urandom(size_mib * MIB)
                path = f"{WORKDIR}/bench-{size_mib}mb.bin"
                if isinstance(impl, LlmSandbox):
                    impl.prepare_put(payload)
                for _ in range(rounds):
                    put_s, get_s = file_round(impl, handle, path, payload)
                    stats[put_key].samples.append(put_s)
                    stats[get_key].samples.append(get_s)
    finally:
        impl.close(handle)


@dataclass
class ConcurrentRound:
    all_ready_s: float
    all_ended_s: float
    per_session_ready_s: list[float]
    open_errors: list[str]
    end_errors: list[str]
    opened: int


def concurrent_round(impl: Impl[Any], count: int) -> ConcurrentRound:
    """Open `count` sessions from `count` threads at once, wait for all, then end them all."""
    handles: list[Any] = []
    latencies: list[float] = []
    open_errors: list[str] = []
    end_errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one() -> None:
        try:
            handle = impl.open()
        except Exception as exc:
            with lock:
                open_errors.append(describe(exc))
            return
        with lock:
            handles.append(handle)
            latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=count) as pool:
        for _ in range(count):
            pool.submit(one)
    all_ready = time.perf_counter() - start

    def end(handle: Any) -> None:
        try:
            impl.close(handle)
        except Exception as exc:
            with lock:
                end_errors.append(describe(exc))

    end_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(handles))) as pool:
        for handle in handles:
            pool.submit(end, handle)
    all_ended = time.perf_counter() - end_start
    return ConcurrentRound(
        all_ready_s=all_ready,
        all_ended_s=all_ended,
        per_session_ready_s=sorted(latencies),
        open_errors=open_errors,
        end_errors=end_errors,
        opened=len(handles),
    )


def bench_concurrent(impl: Impl[Any], stats: dict[str, Stat], count: int, rounds: int) -> None:
    for _ in range(rounds):
        result = concurrent_round(impl, count)
        if result.open_errors:
            stats[
                "concurrent_ready"
            ].error = f"{len(result.open_errors)}/{count} failed; first: {result.open_errors[0]}"
        else:
            stats["concurrent_ready"].samples.append(result.all_ready_s)
            stats["concurrent_ready"].extra.setdefault("per_session_ready_s", []).append(
                result.per_session_ready_s
            )
        if result.end_errors:
            stats[
                "concurrent_end"
            ].error = (
                f"{len(result.end_errors)}/{result.opened} failed; first: {result.end_errors[0]}"
            )
        elif result.opened:
            stats["concurrent_end"].samples.append(result.all_ended_s)


def bench_output_in_child(
    impl_name: str,
    image: str,
    run_id: str,
    stats: dict[str, Stat],
    args: argparse.Namespace,
    *,
    keep_all: bool,
) -> None:
    """Run the 50 MiB output case in a fresh interpreter, so memory peaks stay separate."""
    prefix = "output_50mb_all" if keep_all else "output_50mb"
    keys = (f"{prefix}_wall", f"{prefix}_tracemalloc", f"{prefix}_rss")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--_output-child",
        impl_name,
        "--image",
        image,
        "--run-id",
        run_id,
        "--rounds",
        str(args.output_rounds),
        "--llm-sandbox-user",
        args.llm_sandbox_user,
    ]
    if keep_all:
        command.append("--_keep-all")
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        for key in keys:
            stats[key].error = "the child process timed out after 300 s"
        return
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
        for key in keys:
            stats[key].error = f"child exited {child.returncode}: {tail}"
        return
    report = json.loads(lines[-1])
    if report.get("error"):
        for key in keys:
            stats[key].error = str(report["error"])
        return
    wall, tracemalloc_peak, rss = (stats[key] for key in keys)
    wall.samples.extend(report["wall_s"])
    rss.samples.extend(report["hwm_growth_bytes"])
    tracemalloc_peak.samples.append(report["tracemalloc_peak_bytes"])
    wall.extra.update(
        stdout_kept=report["stdout_kept"],
        truncated=report["truncated"],
        ru_maxrss_bytes=report["ru_maxrss_bytes"],
        ru_maxrss_at_start_bytes=report["ru_maxrss_at_start_bytes"],
        baseline_rss_bytes=report["baseline_rss_bytes"],
    )
    rss.extra.update(hwm_reset=report["hwm_reset"])


def bench_output(
    impl: Impl[Any], image: str, run_id: str, stats: dict[str, Stat], args: argparse.Namespace
) -> None:
    bench_output_in_child(impl.name, image, run_id, stats, args, keep_all=False)
    if not impl.always_keeps_all:
        bench_output_in_child(impl.name, image, run_id, stats, args, keep_all=True)
        return
    # Keeping everything is what this implementation does anyway: one measurement, two rows.
    for suffix in ("wall", "tracemalloc", "rss"):
        source, target = stats[f"output_50mb_{suffix}"], stats[f"output_50mb_all_{suffix}"]
        target.samples = list(source.samples)
        target.error = source.error
        target.extra = {**source.extra, "same_run_as": f"output_50mb_{suffix}"}


def proc_status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def output_child(args: argparse.Namespace) -> int:
    """Child mode: one implementation, one session, `rounds` x 50 MiB of output, JSON on stdout."""
    report: dict[str, Any] = {"impl": args.output_child, "keep_all": args.keep_all}
    # ru_maxrss survives execve (the spawning parent's peak shows through), so it is only
    # context here; VmHWM, reset before each command, is the measurement.
    report["ru_maxrss_at_start_bytes"] = _ru_maxrss_bytes()
    impl = IMPL_CLASSES[args.output_child](args.image, args.run_id, args)
    try:
        impl.setup()
        handle = impl.open()
        try:
            impl.shell(handle, "true")
            shell = impl.shell_keep_all if args.keep_all else impl.shell
            walls: list[float] = []
            growths: list[int] = []
            hwm_reset = True
            out = ShellOut(0, 0)
            for _ in range(args.rounds):
                gc.collect()
                hwm_reset = reset_hwm() and hwm_reset
                baseline = proc_status_bytes("VmRSS")
                start = time.perf_counter()
                out = shell(handle, BIG_OUTPUT_COMMAND)
                walls.append(time.perf_counter() - start)
                growths.append(proc_status_bytes("VmHWM") - baseline)
                if out.exit_code != 0:
                    raise RuntimeError(f"{BIG_OUTPUT_COMMAND!r} exited {out.exit_code}")
            gc.collect()
            # One more round under tracemalloc, whose bookkeeping slows allocation: its wall
            # time is not reported.
            tracemalloc.start()
            shell(handle, BIG_OUTPUT_COMMAND)
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            report.update(
                wall_s=walls,
                hwm_growth_bytes=growths,
                hwm_reset=hwm_reset,
                baseline_rss_bytes=proc_status_bytes("VmRSS"),
                tracemalloc_peak_bytes=peak,
                ru_maxrss_bytes=_ru_maxrss_bytes(),
                stdout_kept=out.stdout_bytes,
                truncated=out.truncated,
            )
        finally:
            impl.close(handle)
    except Exception as exc:
        report["error"] = describe(exc)
    finally:
        with contextlib.suppress(Exception):
            impl.teardown()
        remove_labelled(args.run_id)
    print(json.dumps(report), flush=True)
    return 0


def run_impl(name: str, image: str, run_id: str, args: argparse.Namespace) -> dict[str, Stat]:
    stats = {op.key: Stat() for op in OPS}
    impl = IMPL_CLASSES[name](image, run_id, args)
    try:
        impl.setup()
    except Exception as exc:
        for stat in stats.values():
            stat.error = f"setup failed: {describe(exc)}"
        say(f"  {name}: setup failed: {describe(exc)}")
        return stats
    try:
        stats["ready"].extra["version"] = impl.version()
        say(f"  {name}: session ready / end x{args.rounds}")
        with op_guard(stats, "ready", "end"):
            bench_ready_end(impl, stats, args.rounds, args.warmup)
        say(f"  {name}: shell x{args.shell_iters}, files 1 MiB / 50 MiB x{args.rounds}")
        with op_guard(stats, "shell_true", "put_1mb", "get_1mb", "put_50mb", "get_50mb"):
            bench_in_session(impl, stats, args.rounds, args.shell_iters)
        say(f"  {name}: 50 MiB of output x{args.output_rounds} (child processes)")
        bench_output(impl, image, run_id, stats, args)
        say(f"  {name}: {args.concurrency} sessions at once x{args.concurrency_rounds}")
        with op_guard(stats, "concurrent_ready", "concurrent_end"):
            bench_concurrent(impl, stats, args.concurrency, args.concurrency_rounds)
    finally:
        with contextlib.suppress(Exception):
            impl.teardown()
        remove_labelled(run_id)
    return stats


def run_impl_isolated(
    name: str, image: str, run_id: str, args: argparse.Namespace
) -> dict[str, Stat]:
    """`run_impl` in a fresh interpreter: no implementation inherits another's process state
    (threads, pools, heap), so running them one after another stays fair."""
    forwarded = ["--rounds", str(args.rounds), "--shell-iters", str(args.shell_iters),
                 "--output-rounds", str(args.output_rounds),
                 "--concurrency", str(args.concurrency),
                 "--concurrency-rounds", str(args.concurrency_rounds),
                 "--warmup", str(args.warmup), "--llm-sandbox-user", args.llm_sandbox_user]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "stats.json")
        command = [sys.executable, os.path.abspath(__file__), "--_impl-child", name,
                   "--_impl-out", out, "--image", image, "--run-id", run_id, *forwarded]
        child = subprocess.run(command, check=False, timeout=1800)
        if child.returncode != 0 or not os.path.exists(out):
            failed = {op.key: Stat() for op in OPS}
            for stat in failed.values():
                stat.error = f"child process exited {child.returncode}"
            return failed
        with open(out) as source:
            raw = json.load(source)
    return {
        key: Stat(samples=list(v["samples"]), error=v["error"], extra=dict(v.get("extra", {})))
        for key, v in raw.items()
    }


def impl_child(args: argparse.Namespace) -> int:
    """The child side of `run_impl_isolated`: measure one implementation, write its stats."""
    stats = run_impl(args.impl_child, args.image, args.run_id, args)
    with open(args.impl_out, "w") as out:
        json.dump({key: stat.as_json() for key, stat in stats.items()}, out)
    return 0


def remove_labelled(run_id: str | None) -> int:
    """Force-remove this run's labelled containers (every run's when run_id is None)."""
    selector = LABEL if run_id is None else f"{LABEL}={run_id}"
    removed = 0
    try:
        api = docker.APIClient(version="auto", **docker_kwargs())
        try:
            for container in api.containers(all=True, filters={"label": selector}):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(container["Id"], force=True)
                    removed += 1
        finally:
            api.close()
    except Exception as exc:
        say(f"cleanup of containers labelled {selector} failed: {describe(exc)}")
    return removed


# --------------------------------------------------------------------------- reporting


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / MIB:.1f} MiB"
    ms = value * 1000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"


RATIO_PAIRS = (("ours", "raw"), ("ours", "llm_sandbox"), ("llm_sandbox", "raw"))


def ratios_for(results: dict[str, dict[str, Stat]]) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for op in OPS:
        row: dict[str, float | None] = {}
        for top, bottom in RATIO_PAIRS:
            if top in results and bottom in results:
                row[f"{top}/{bottom}"] = ratio(
                    results[top][op.key].p50, results[bottom][op.key].p50
                )
        table[op.key] = row
    return table


def print_report(results: dict[str, dict[str, Stat]], meta: dict[str, Any]) -> None:
    names = list(results)
    print()
    print(
        f"image {meta['image']}  rounds {meta['rounds']}  shell iterations {meta['shell_iters']}"
        f"  concurrency {meta['concurrency']}  ({meta['host']})"
    )
    for name in names:
        version = results[name]["ready"].extra.get("version")
        if version:
            print(f"  {name}: {version}")
    print()
    header = f"{'operation':<48} {'impl':<12} {'p50':>11} {'p90':>11} {'n':>4}  {'vs raw':>8}"
    header += f"  {'vs llm_sandbox':>14}"
    print(header)
    print("-" * len(header))
    for op in OPS:
        for index, name in enumerate(names):
            stat = results[name][op.key]
            label = op.label.replace("N sessions", f"{meta['concurrency']} sessions")
            left = f"{label if index == 0 else '':<48} {name:<12}"
            if stat.error is not None and not stat.samples:
                print(f"{left} ERROR {stat.error}")
                continue
            vs_raw = ratio(stat.p50, results["raw"][op.key].p50) if "raw" in results else None
            vs_llm = (
                ratio(stat.p50, results["llm_sandbox"][op.key].p50)
                if "llm_sandbox" in results
                else None
            )
            line = (
                f"{left} {fmt_value(stat.p50, op.unit):>11} {fmt_value(stat.p90, op.unit):>11}"
                f" {len(stat.samples):>4}  {fmt_ratio(vs_raw if name != 'raw' else None):>8}"
                f"  {fmt_ratio(vs_llm if name != 'llm_sandbox' else None):>14}"
            )
            notes = []
            if op.key in ("output_50mb_wall", "output_50mb_all_wall") and stat.extra:
                kept = stat.extra.get("stdout_kept")
                if isinstance(kept, int) and name == "raw" and op.key == "output_50mb_wall":
                    notes.append(f"received {kept / MIB:.1f} MiB, streamed and dropped")
                elif isinstance(kept, int):
                    notes.append(f"kept {kept / MIB:.1f} MiB of stdout")
                if stat.extra.get("truncated"):
                    notes.append("truncated")
            if "same_run_as" in stat.extra:
                notes.append("same measurement as above")
            if op.key.endswith("_rss") and stat.extra.get("hwm_reset") is False:
                notes.append("VmHWM could not be reset")
            if stat.error:
                notes.append(f"partial, error: {stat.error}")
            print(line + (f"  ({'; '.join(notes)})" if notes else ""))
        print()
    ratios = ratios_for(results)
    pairs = [
        f"{top}/{bottom}" for top, bottom in RATIO_PAIRS if top in results and bottom in results
    ]
    if pairs:
        print("ratios of medians")
        head = f"{'operation':<48}" + "".join(f" {pair:>18}" for pair in pairs)
        print(head)
        print("-" * len(head))
        for op in OPS:
            label = op.label.replace("N sessions", f"{meta['concurrency']} sessions")
            print(f"{label:<48}" + "".join(f" {fmt_ratio(ratios[op.key][p]):>18}" for p in pairs))
    if "ours" in results:
        p50 = results["ours"]["shell_true"].p50
        if p50 is not None:
            verdict = "met" if p50 < 0.003 else "NOT met"
            print(f'\nours shell("true") p50 {p50 * 1000:.2f} ms: target < 3 ms {verdict}')


# --------------------------------------------------------------------------- main


def pick_image(requested: str | None) -> str:
    if requested:
        return requested
    api = docker.APIClient(version="auto", **docker_kwargs())
    try:
        for candidate in DEFAULT_IMAGES:
            try:
                api.inspect_image(candidate)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                continue
            return candidate
    finally:
        api.close()
    raise SystemExit(f"none of {', '.join(DEFAULT_IMAGES)} exists locally: pass --image")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark sandbox_sessions against the raw Docker SDK and llm-sandbox, "
            "operation by operation."
        )
    )
    parser.add_argument(
        "--image",
        help=f"image for every implementation (default: the first of {', '.join(DEFAULT_IMAGES)})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="samples of session ready/end and of each file size (default 5)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    parser.add_argument(
        "--only", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}"
    )
    parser.add_argument(
        "--shell-iters", type=int, default=30, help='timed shell("true") calls (default 30)'
    )
    parser.add_argument(
        "--output-rounds",
        type=int,
        default=2,
        help="timed 50 MiB output commands per implementation (default 2)",
    )
    parser.add_argument("--concurrency", type=int, default=20, help="sessions at once (default 20)")
    parser.add_argument(
        "--concurrency-rounds",
        type=int,
        default=1,
        help="repetitions of the concurrent case (default 1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed sessions before the timed ones (default 1)"
    )
    parser.add_argument(
        "--llm-sandbox-user",
        default=USER,
        help=f"user of llm-sandbox's containers (default {USER}, as the others; llm-sandbox's "
        "own default is root)",
    )
    parser.add_argument(
        "--cleanup-stale",
        action="store_true",
        help=f"first remove containers of earlier runs (label {LABEL})",
    )
    parser.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_output-child", dest="output_child", help=argparse.SUPPRESS)
    parser.add_argument("--_keep-all", dest="keep_all", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_impl-child", dest="impl_child", help=argparse.SUPPRESS)
    parser.add_argument("--_impl-out", dest="impl_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in IMPLS]
    if unknown or not args.only:
        parser.error(f"--only takes names among {','.join(IMPLS)}; got {args.only}")
    for name in ("rounds", "shell_iters", "output_rounds", "concurrency", "concurrency_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.output_child:
        return output_child(args)
    if args.impl_child:
        return impl_child(args)
    image = pick_image(args.image)
    run_id = args.run_id or uuid.uuid4().hex[:12]
    if args.cleanup_stale:
        say(f"removed {remove_labelled(None)} stale containers")
    meta: dict[str, Any] = {
        "image": image,
        "run_id": run_id,
        "rounds": args.rounds,
        "shell_iters": args.shell_iters,
        "output_rounds": args.output_rounds,
        "concurrency": args.concurrency,
        "concurrency_rounds": args.concurrency_rounds,
        "warmup": args.warmup,
        "llm_sandbox_user": args.llm_sandbox_user,
        "implementations": args.only,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": f"{platform.system()} {platform.release()}, {os.cpu_count()} cpus",
    }
    results: dict[str, dict[str, Stat]] = {}
    started = time.perf_counter()
    try:
        for name in args.only:
            say(f"{name}:")
            impl_started = time.perf_counter()
            results[name] = run_impl_isolated(name, image, run_id, args)
            say(f"  {name}: done in {time.perf_counter() - impl_started:.1f} s")
    finally:
        leftover = remove_labelled(run_id)
        if leftover:
            say(f"removed {leftover} leftover containers")
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(results, meta)
    print(f"\ntotal {meta['elapsed_s']} s")
    if args.json:
        document = {
            "meta": meta,
            "operations": {op.key: {"label": op.label, "unit": op.unit} for op in OPS},
            "results": {
                name: {key: stat.as_json() for key, stat in stats.items()}
                for name, stats in results.items()
            },
            "ratios_of_p50": ratios_for(results),
        }
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
