"""Prefix reuse through SGLang's radix cache stays on under drift."""

from __future__ import annotations

from itertools import pairwise

import pytest

from e2e.conversations import run_conversation

pytestmark = pytest.mark.slow


def test_later_turns_reuse_the_previous_prompt(drift_server):
    responses = run_conversation(drift_server, conv=101, turns=5)
    for prev, cur in pairwise(responses):
        cached = cur["usage"]["prompt_tokens_details"]["cached_tokens"]
        # The whole previous prompt is a prefix of this one and was cached.
        assert cached >= prev["usage"]["prompt_tokens"], (cached, prev["usage"])
        assert cached < cur["usage"]["prompt_tokens"]
