"""The sync facade mirrors the async core, and the package exports what it promises.

These tests read the classes themselves (no engine needed): a method added to one API and not
the other, or a parameter that drifts, fails here.
"""

from __future__ import annotations

import builtins
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

import sandbox_sessions
from sandbox_sessions import _exceptions
from sandbox_sessions._exceptions import SandboxSessionsError
from sandbox_sessions.client._client import AsyncSandboxClient
from sandbox_sessions.client._session import AsyncAgent, AsyncSessionHandle
from sandbox_sessions.client._sync import Agent, SandboxClient, SessionHandle

PAIRS: list[tuple[type[Any], type[Any]]] = [
    (SandboxClient, AsyncSandboxClient),
    (Agent, AsyncAgent),
    (SessionHandle, AsyncSessionHandle),
]
PAIR_IDS = [sync.__name__ for sync, _ in PAIRS]

# Names that differ on purpose between the two APIs: (sync name, async name).
RENAMED = {("close", "aclose"), ("portal", "service")}


def public_names(cls: type[Any]) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def comparable_names(sync_cls: type[Any], async_cls: type[Any]) -> tuple[set[str], set[str]]:
    sync_only = {sync for sync, _ in RENAMED}
    async_only = {async_ for _, async_ in RENAMED}
    return public_names(sync_cls) - sync_only, public_names(async_cls) - async_only


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    """Each parameter's name, kind, default and annotation (a string: postponed annotations)."""
    return [
        (p.name, p.kind, p.default, p.annotation)
        for p in inspect.signature(function).parameters.values()
    ]


def exception_classes() -> list[type[SandboxSessionsError]]:
    """Every exception class defined in `_exceptions` (asserted to share the base elsewhere)."""
    found: list[type[SandboxSessionsError]] = []
    for value in vars(_exceptions).values():
        if (isinstance(value, type) and issubclass(value, BaseException)
                and value.__module__ == _exceptions.__name__):
            found.append(value)  # type: ignore[arg-type]  # checked in the tests
    return found


def isort_key(name: str) -> tuple[int, str]:
    """The order of ruff's RUF022: CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_public_method_names_match(sync_cls: type[Any], async_cls: type[Any]) -> None:
    sync_names, async_names = comparable_names(sync_cls, async_cls)

    assert sync_names == async_names
    assert sync_names, "nothing was compared"


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_renamed_pairs_exist_on_both_sides(sync_cls: type[Any], async_cls: type[Any]) -> None:
    for sync_name, async_name in RENAMED:
        assert hasattr(sync_cls, sync_name) == hasattr(async_cls, async_name), (
            f"{sync_cls.__name__}.{sync_name} vs {async_cls.__name__}.{async_name}"
        )


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_signatures_match(sync_cls: type[Any], async_cls: type[Any]) -> None:
    sync_names, _ = comparable_names(sync_cls, async_cls)
    compared = 0
    for name in sorted(sync_names):
        sync_member, async_member = getattr(sync_cls, name), getattr(async_cls, name)
        if not callable(async_member):
            continue
        assert callable(sync_member), f"{sync_cls.__name__}.{name} is not callable"
        assert parameters(sync_member) == parameters(async_member), name
        compared += 1
    assert compared >= 1


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_sync_methods_block_where_async_ones_await(
    sync_cls: type[Any], async_cls: type[Any]
) -> None:
    sync_names, _ = comparable_names(sync_cls, async_cls)
    for name in sync_names:
        sync_member = getattr(sync_cls, name)
        if callable(sync_member):
            assert not inspect.iscoroutinefunction(sync_member), name
    # A handle and a client must close (end) on leaving their `with` block, on both sides.
    if hasattr(async_cls, "__aexit__"):
        assert hasattr(sync_cls, "__exit__")


def test_the_async_handle_has_coroutine_calls() -> None:
    # The parity tests would pass for two sync APIs; make sure the async one is async.
    assert inspect.iscoroutinefunction(AsyncSessionHandle.shell)
    assert inspect.iscoroutinefunction(AsyncAgent.create_session)
    assert inspect.iscoroutinefunction(AsyncSandboxClient.gc)


def test_all_names_exist_are_unique_and_sorted() -> None:
    names = sandbox_sessions.__all__

    assert len(names) == len(set(names))
    assert names == sorted(names, key=isort_key)
    missing = [name for name in names if not hasattr(sandbox_sessions, name)]
    assert missing == []


def test_the_clients_and_handles_are_exported() -> None:
    exported = set(sandbox_sessions.__all__)
    for sync_cls, async_cls in PAIRS:
        assert {sync_cls.__name__, async_cls.__name__} <= exported
        assert getattr(sandbox_sessions, sync_cls.__name__) is sync_cls
        assert getattr(sandbox_sessions, async_cls.__name__) is async_cls


def test_every_error_subclasses_the_base_and_is_exported() -> None:
    classes = exception_classes()

    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, SandboxSessionsError), cls
        assert cls.__name__ in sandbox_sessions.__all__, cls
        assert getattr(sandbox_sessions, cls.__name__) is cls
    error_names = [name for name in _exceptions.__all__
                   if isinstance(getattr(_exceptions, name), type)]
    assert sorted(cls.__name__ for cls in classes) == sorted(error_names)
    # the rest of the module's names are the wire helpers, kept out of the package's API
    assert set(_exceptions.__all__) - set(error_names) == {"HTTP_STATUS", "from_wire", "to_wire"}


def test_every_error_has_a_unique_code() -> None:
    codes = [cls.code for cls in exception_classes()]

    assert all(isinstance(code, str) and code for code in codes)
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(re.fullmatch(r"[a-z][a-z_]*", code) for code in codes), codes


def test_the_docstring_tree_names_each_error_with_its_code() -> None:
    doc = _exceptions.__doc__ or ""
    for cls in exception_classes():
        lines = [line for line in doc.splitlines()
                 if re.search(rf"[\s─]{cls.__name__}\b", f" {line}")]
        assert len(lines) == 1, f"{cls.__name__} is not in the tree exactly once"
        words = lines[0].replace("(", " ").replace(")", " ").split()
        assert cls.code in words, f"{cls.__name__}: {lines[0]!r}"
        assert ("retryable" in words) == cls.retryable, cls.__name__
        for word in words:
            builtin = getattr(builtins, word, None)
            if isinstance(builtin, type) and issubclass(builtin, BaseException):
                assert issubclass(cls, builtin), f"{cls.__name__} should subclass {word}"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (_exceptions.SessionNotFound, LookupError),
        (_exceptions.OperationTimeout, TimeoutError),
        (_exceptions.StoreError, RuntimeError),
        (_exceptions.InvalidArgument, ValueError),
        (_exceptions.SandboxFileNotFound, FileNotFoundError),
        (_exceptions.SandboxUnavailable, ConnectionError),
    ],
)
def test_errors_subclass_the_nearest_builtin(
    cls: type[SandboxSessionsError], builtin: type[BaseException]
) -> None:
    assert issubclass(cls, builtin)
