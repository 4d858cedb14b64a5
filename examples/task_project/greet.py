"""The small project that examples/task.yaml uploads: the agent adds its tests and entry point."""


def greet(name: str) -> str:
    return f"hello, {name}"
