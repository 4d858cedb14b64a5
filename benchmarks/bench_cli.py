"""The command line and folder transfers, against their floors, as ratios within one run.

- **upload / download of a folder** (`session.upload()`, `session.download()`, which `run
  --upload` and `cp` use) against the raw docker SDK floor on the same container: a tar made
  in memory and `put_archive`, and `get_archive` unpacked with tarfile's `data` filter. Ours
  walks the folder, reads each `.gitignore`, skips links, and goes through the session's
  socket and a `tar` in the container; the floor does none of the checks. llm-sandbox's
  `copy_to_runtime` / `copy_from_runtime` are measured too when it is installed
  (`pip install 'llm-sandbox[docker]'`).
- **a one-prompt `run`** through the CLI (a new process: Python, imports, the client, a
  session, the turn, the end) against the same through the Python API in this process, and
  `sandbox-sessions --version` alone (the process's floor).

    .venv/bin/python benchmarks/bench_cli.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from sandbox_sessions import DEFAULT_IMAGE, SandboxClient

FILES = 400
FILE_BYTES = 8 * 1024
BIG_BYTES = 4 * 1024 * 1024


def make_project(root: Path) -> int:
    """A project folder: `FILES` small files in 20 folders, one 4 MiB file, and an ignored
    build folder; its bytes (what is sent)."""
    total = 0
    for index in range(FILES):
        path = root / f"pkg{index % 20}" / f"module{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (f"# module {index}\n".encode() * (FILE_BYTES // 12))[:FILE_BYTES]
        path.write_bytes(data)
        total += len(data)
    (root / "data.bin").write_bytes(os.urandom(BIG_BYTES))
    total += BIG_BYTES
    (root / "build").mkdir()
    (root / "build" / "junk.o").write_bytes(b"\0" * 1024 * 1024)
    (root / ".gitignore").write_text("build/\n")
    return total + len("build/\n")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(rounds: int, run: Callable[[int], object]) -> list[float]:
    samples = []
    for index in range(rounds):
        started = time.perf_counter()
        run(index)
        samples.append(time.perf_counter() - started)
    return samples


def raw_tar(root: Path) -> bytes:
    """The floor's archive: every file, no checks (the ignored folder left out by hand)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(root, arcname=".", filter=lambda info: None if info.name.startswith("./build")
                else info)
    return buffer.getvalue()


def bench_transfers(client: SandboxClient, root: Path, scratch: Path, rounds: int
                    ) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    engine = docker.APIClient()
    with client.agent("bench-cli").create_session(title="bench") as session:
        container = session.get_info().container_id
        assert container is not None

        def ours_up(index: int) -> None:
            done = session.upload(root, f"/workspace/ours{index}")
            assert done.ignored == 1, done
            assert not done.skipped, done

        def raw_up(index: int) -> None:
            data = raw_tar(root)
            made = engine.exec_create(container, ["mkdir", "-p", f"/workspace/raw{index}"])
            engine.exec_start(made["Id"])
            assert engine.put_archive(container, f"/workspace/raw{index}", data)

        def ours_down(index: int) -> None:
            done = session.download("/workspace/ours0", scratch / f"ours{index}")
            assert not done.skipped, done.skipped

        def raw_down(index: int) -> None:
            stream, _ = engine.get_archive(container, "/workspace/raw0/.")
            data = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(scratch / f"raw{index}", filter="data")

        results["upload: ours"] = timed(rounds, ours_up)
        results["upload: raw floor"] = timed(rounds, raw_up)
        results["download: ours"] = timed(rounds, ours_down)
        results["download: raw floor"] = timed(rounds, raw_down)
        results.update(bench_llm_sandbox(root, scratch, rounds))
    return results


def bench_llm_sandbox(root: Path, scratch: Path, rounds: int) -> dict[str, list[float]]:
    try:
        from llm_sandbox import SandboxSession
    except ImportError:
        print("llm-sandbox is not installed: its transfers are not measured", file=sys.stderr)
        return {}
    results: dict[str, list[float]] = {}
    with SandboxSession(image=DEFAULT_IMAGE, lang="python", keep_template=True,
                        skip_environment_setup=True, workdir="/workspace") as box:
        results["upload: llm-sandbox"] = timed(
            rounds, lambda index: box.copy_to_runtime(str(root), f"/workspace/llm{index}"))
        results["download: llm-sandbox"] = timed(
            rounds, lambda index: box.copy_from_runtime("/workspace/llm0",
                                                        str(scratch / f"llm{index}")))
    return results


def bench_run(client: SandboxClient, folder: Path, rounds: int) -> dict[str, list[float]]:
    script = folder / "model.yaml"
    script.write_text("- text: done\n")
    env = {**os.environ, "SANDBOX_SESSIONS_DB": str(folder / "cli.db")}
    command = [sys.executable, "-m", "sandbox_sessions"]

    def cli_run(_: int) -> None:
        subprocess.run([*command, "run", "go", "--script", str(script)], env=env, check=True,
                       capture_output=True)

    def api_run(_: int) -> None:
        agent = client.agent("bench-run", model="scripted", script=str(script))
        with agent.create_session(title="go") as session:
            assert session.send("go").reason == "completed"

    def version(_: int) -> None:
        subprocess.run([*command, "--version"], env=env, check=True, capture_output=True)

    return {"one-prompt run: CLI process": timed(rounds, cli_run),
            "one-prompt run: Python API, in process": timed(rounds, api_run),
            "sandbox-sessions --version": timed(rounds, version)}


def report(results: dict[str, list[float]], project_bytes: int) -> dict[str, Any]:
    medians = {name: median_ms(samples) for name, samples in results.items()}
    print(f"project: {FILES} files of {FILE_BYTES // 1024} KiB and one of "
          f"{BIG_BYTES // 1024 // 1024} MiB ({project_bytes / 1024 / 1024:.1f} MiB sent), "
          "an ignored 1 MiB build folder")
    width = max(map(len, medians)) + 2
    for name, value in medians.items():
        print(f"{name:{width}}{value:10.1f} ms")
    ratios: dict[str, float] = {}
    for kind in ("upload", "download"):
        floor = medians.get(f"{kind}: raw floor")
        for peer in ("ours", "llm-sandbox"):
            measured = medians.get(f"{kind}: {peer}")
            if floor is not None and measured is not None:
                ratios[f"{kind}: {peer} / raw floor"] = measured / floor
    cli, api = (medians["one-prompt run: CLI process"],
                medians["one-prompt run: Python API, in process"])
    ratios["one-prompt run: CLI / Python API"] = cli / api
    for name, value in ratios.items():
        print(f"{name:{width}}{value:10.2f}")
    return {"medians_ms": medians, "ratios": ratios, "samples": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as temp:
        folder = Path(temp)
        root = folder / "project"
        root.mkdir()
        project_bytes = make_project(root)
        scratch = folder / "scratch"
        with SandboxClient(store=folder / "bench.db") as client:
            results = bench_transfers(client, root, scratch, args.rounds)
            results.update(bench_run(client, folder, args.rounds))
        figures = report(results, project_bytes)
    if args.json is not None:
        import json

        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
