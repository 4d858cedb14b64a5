"""The offline image build, against the real Docker engine and the real `docker` CLI."""

from __future__ import annotations

import subprocess

import pytest

from sandbox_sessions._exceptions import ImageBuildError
from sandbox_sessions._types import DEFAULT_IMAGE
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.sandbox._images import (
    BASE_ID_LABEL,
    CONTENT_HASH_LABEL,
    DEFAULT_BASE_IMAGE,
    IMAGE_LABEL,
    ImageBuild,
    build_image,
    content_hash,
    images_dir,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def first_build(engine: Engine) -> ImageBuild:
    """Build the default image once (bootstrapping the base only if it is missing)."""
    lines: list[str] = []
    build = build_image(engine, progress=lines.append)
    assert lines, "progress got no line"
    return build


def test_second_build_is_skipped_with_the_same_hash(
    engine: Engine, first_build: ImageBuild
) -> None:
    lines: list[str] = []
    second = build_image(engine, progress=lines.append)

    assert second.built is False
    assert second.tag == DEFAULT_IMAGE
    assert second.content_hash == first_build.content_hash == content_hash(images_dir())
    assert second.image_id == first_build.image_id
    assert any("up to date" in line for line in lines)


def test_image_carries_its_labels(engine: Engine, first_build: ImageBuild) -> None:
    labels = engine.image_labels(DEFAULT_IMAGE)

    assert labels is not None
    assert labels[CONTENT_HASH_LABEL] == first_build.content_hash
    assert labels[IMAGE_LABEL] == "sandbox"
    assert labels[BASE_ID_LABEL] == engine.image_id(DEFAULT_BASE_IMAGE)


def test_force_builds_again(engine: Engine, first_build: ImageBuild) -> None:
    lines: list[str] = []
    forced = build_image(engine, force=True, progress=lines.append)

    assert forced.built is True
    assert forced.content_hash == first_build.content_hash
    assert engine.image_id(DEFAULT_IMAGE) == forced.image_id
    assert any(line.startswith("Step ") for line in lines), lines


def test_image_runs_as_uid_1000_with_the_tools(first_build: ImageBuild) -> None:
    # dash's `command -v` looks up its first name only: one call per tool, failing fast.
    script = 'id -u; for tool in git python3 rg bash; do command -v "$tool"; done'
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", first_build.tag, "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    uid, *tools = run.stdout.split()
    assert uid == "1000"
    assert [tool.rsplit("/", 1)[-1] for tool in tools] == ["git", "python3", "rg", "bash"]


def test_failed_bootstrap_raises_with_its_output(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) on loopback refuses at once: debootstrap fails fast, as with no mirror.
    monkeypatch.setenv("SANDBOX_SESSIONS_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    missing = "sandbox-sessions/test-missing-base:never"
    assert engine.image_id(missing) is None
    lines: list[str] = []

    with pytest.raises(ImageBuildError, match=r"bootstrap-base\.sh failed") as caught:
        build_image(
            engine, tag="sandbox-sessions/test-never:built", base=missing, progress=lines.append
        )

    assert lines
    assert lines[-1] in str(caught.value)
    assert engine.image_id(missing) is None
