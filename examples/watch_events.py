"""Follow a session's events over the bridge, from another process than the one driving it.

    sandbox-sessions serve &                 # prints its URL; the token is in its token file
    export SANDBOX_SESSIONS_URL=http://127.0.0.1:4096
    python examples/watch_events.py SESSION_ID --until-turn-end

The client takes the server's URL from `SANDBOX_SESSIONS_URL` and the token from
`SANDBOX_SESSIONS_TOKEN` or the server's token file. Events print as JSON lines, stored ones
first and then live ones; a reader that reconnects with `--after SEQ` loses nothing and sees
nothing twice.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio

from sandbox_sessions import AsyncSandboxClient


async def watch(session_id: str, after: int, until_turn_end: bool) -> int:
    async with AsyncSandboxClient() as client:
        async for event in client.session(session_id).events(after=after):
            print(json.dumps(event.model_dump(mode="json")), flush=True)
            if until_turn_end and event.type == "turn-end":
                return 0 if event.reason == "completed" else 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("session_id")
    parser.add_argument("--after", type=int, default=0, help="resume after this seq")
    parser.add_argument("--until-turn-end", action="store_true",
                        help="stop at the first turn-end (exit 1 unless it completed)")
    args = parser.parse_args()
    return anyio.run(watch, args.session_id, args.after, args.until_turn_end)


if __name__ == "__main__":
    sys.exit(main())
