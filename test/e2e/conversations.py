"""Deterministic multi-turn conversations, run against any server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from drift_sgl.tools.server_process import ServerProcess
from e2e.client import chat

TOPICS = ["weather", "tools", "rust", "paris", "numbers", "agents", "cache", "gpus", "json", "fox"]


def user_turn(conv: int, turn: int) -> str:
    topic = TOPICS[(conv + turn) % len(TOPICS)]
    return f"conversation {conv} turn {turn}: tell me about {topic} " + "and more " * (
        turn + conv % 3
    )


def run_conversation(server: ServerProcess, conv: int, turns: int) -> list[dict]:
    """Run one conversation; returns each turn's response JSON."""
    messages = [{"role": "system", "content": f"you are agent {conv}."}]
    responses = []
    for turn in range(turns):
        messages.append({"role": "user", "content": user_turn(conv, turn)})
        resp = chat(server, messages, max_tokens=12 + (conv % 4) * 4)
        responses.append(resp)
        messages.append({"role": "assistant", "content": resp["choices"][0]["message"]["content"]})
    return responses


def run_conversations(server: ServerProcess, num: int, turns: int) -> list[list[dict]]:
    """Run ``num`` conversations concurrently (one client thread each)."""
    with ThreadPoolExecutor(max_workers=num) as pool:
        futures = [pool.submit(run_conversation, server, c, turns) for c in range(num)]
        return [f.result() for f in futures]


def answers(runs: list[list[dict]]) -> list[list[str]]:
    """The assistant's text of every turn of every conversation, for comparisons."""
    return [[r["choices"][0]["message"]["content"] for r in conv] for conv in runs]
