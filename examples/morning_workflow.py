"""The seed's "morning workflow", against a running TowerOps server.

It preloads a model, so its key needs the admin scope besides select and read:

    .venv/bin/python manage.py create_api_key morning --scopes select,read,admin   # the last line is the key
    export TOWEROPS_URL=http://127.0.0.1:8000 TOWEROPS_API_KEY=tow_...
    .venv/bin/python examples/morning_workflow.py

(`scripts/run` installs the client into .venv; elsewhere `pip install ./towerops_client`.)
First query of the day (cold), preload the coder model, query again (warm), and the
seed's fallback: an interactive caller facing a long wait takes the fastest loaded model
that still meets the task's quality floor.
"""
from __future__ import annotations

import asyncio
import sys
import time

from towerops_client import TaskUrgency, TowerModelManager, TowerOpsError


async def morning_workflow(wait_for_load_s: float = 60.0) -> None:
    manager = TowerModelManager()

    # First query of the day - nothing loaded
    model, reason, wait = await manager.select_model('code_generation', TaskUrgency.INTERACTIVE)
    print(f'Cold start: {model} ({wait:.1f}s) - {reason}')

    urgency = TaskUrgency.INTERACTIVE
    if wait > 5.0 and urgency == TaskUrgency.INTERACTIVE:
        # Warn user or pick faster alternative
        fastest = manager.get_fastest_loaded_model()
        print(f'  faster alternative already loaded: {fastest or "none"}')

    # Preload for the day
    preload = await manager.preload_model('qwen2.5-coder:7b')
    print(f'Preload qwen2.5-coder:7b: {preload}')

    # Wait until it is loaded (the runtime loads it in the background)
    deadline = time.monotonic() + wait_for_load_s
    while time.monotonic() < deadline:
        residents = manager.get_state().get("residents", [])
        if any(r.get("model") == "qwen2.5-coder:7b" and r.get("state") == "loaded"
               for r in residents):
            break
        await asyncio.sleep(1.0)

    # Now with model loaded
    model, reason, wait = await manager.select_model('code_generation', TaskUrgency.INTERACTIVE)
    print(f'Warmed up: {model} ({wait:.1f}s) - {reason}')


def main() -> int:
    try:
        asyncio.run(morning_workflow())
    except TowerOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
