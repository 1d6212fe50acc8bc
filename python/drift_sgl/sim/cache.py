"""A segment-level radix prefix cache with LRU eviction, and the KV pool it lives in.

The simulator never sees token ids, so a token sequence is a chain of named
segments: a session's prompt for turn k is
``[shared:<id>] + [<s>:in0, <s>:out0, ..., <s>:in<k>]``. The tree has one node
per segment, keyed by its parent and the segment's name, holding the
segment's token count. A match returns the whole cached segments along the
path; a partial segment never matches (the trace has no token ids to compare).

Capacity accounting mirrors SGLang's KV pool shared with its radix tree:
``tree tokens + private tokens <= capacity``, where private tokens are KV that
running requests hold outside the tree (their freshly prefilled prompt until
it is inserted, and the reserve for their output). A node locked by a request
(in prefill or decode) is never evicted; unlocked leaves are evicted least
recently used first. Locks hold along the whole path, so an unlocked node has
no locked descendant and ``tree - locked`` tokens can all be freed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

#: (name, tokens): one piece of a token sequence.
Segment = tuple[str, int]


class CapacityError(RuntimeError):
    """The KV pool went over its capacity: a bug in the simulator, never an input error."""


class _Node:
    __slots__ = ("access", "alive", "children", "key", "lock", "nid", "parent", "tokens")

    def __init__(self, key: str, tokens: int, parent: _Node | None, nid: int) -> None:
        self.key = key
        self.tokens = tokens
        self.parent = parent
        self.nid = nid
        self.children: dict[str, _Node] = {}
        self.lock = 0
        self.access = 0
        self.alive = True


@dataclass(frozen=True)
class CacheStats:
    """What a cache went through in one run."""

    capacity_tokens: int
    max_used_tokens: int
    evicted_tokens: int
    evictions: int


class RadixCache:
    """Prefix tree over segments inside a KV pool of ``capacity`` tokens."""

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens < 1:
            raise ValueError(f"KV capacity must be >= 1 token, got {capacity_tokens}")
        self.capacity = capacity_tokens
        self.root = _Node("", 0, None, 0)
        self.root.lock = 1  # never evicted
        self.tree_tokens = 0
        self.private_tokens = 0
        self.locked_tokens = 0
        self.max_used = 0
        self.evicted_tokens = 0
        self.evictions = 0
        self._ids = itertools.count(1)
        self._tick = itertools.count(1)
        self._leaves: list[tuple[int, int, _Node]] = []
        self._nodes = 0
        #: Changes whenever a node is added or evicted (so a match can be memoised).
        self.version = 0

    # ------------------------------------------------------------ queries

    @property
    def used(self) -> int:
        return self.tree_tokens + self.private_tokens

    @property
    def available(self) -> int:
        """Tokens a reservation may take now: free plus evictable."""
        return self.capacity - self.used + self.tree_tokens - self.locked_tokens

    def match(self, segments: Sequence[Segment], touch: bool = False) -> tuple[list[_Node], int]:
        """Nodes of the longest cached prefix of whole segments, and their tokens.

        ``touch`` marks them used now (an admission); a peek leaves LRU order alone.
        """
        node, path, tokens = self.root, [], 0
        for key, _ in segments:
            child = node.children.get(key)
            if child is None:
                break
            path.append(child)
            tokens += child.tokens
            node = child
        if touch:
            self._touch(path)
        return path, tokens

    # -------------------------------------------------------------- locks

    def lock(self, nodes: Sequence[_Node]) -> None:
        for node in nodes:
            node.lock += 1
            if node.lock == 1:
                self.locked_tokens += node.tokens

    def unlock(self, nodes: Sequence[_Node]) -> None:
        for node in nodes:
            node.lock -= 1
            if node.lock < 0:
                raise CapacityError(f"segment {node.key} unlocked more often than locked")
            if node.lock == 0:
                self.locked_tokens -= node.tokens
                self._push_if_leaf(node)

    # ---------------------------------------------------------- the pool

    def reserve(self, tokens: int) -> bool:
        """Take ``tokens`` private KV, evicting LRU leaves if needed; False if impossible."""
        if tokens > self.available:
            return False
        self._evict(tokens - (self.capacity - self.used))
        self.private_tokens += tokens
        self._check()
        return True

    def release(self, tokens: int) -> None:
        self.private_tokens -= tokens
        if self.private_tokens < 0:
            raise CapacityError("released more private KV than was reserved")

    def commit(
        self, parent_path: Sequence[_Node], segments: Sequence[Segment], private: int
    ) -> list[_Node]:
        """Insert ``segments`` below ``parent_path`` and free ``private`` tokens at once.

        The request computed those segments into its private KV; segments another
        request inserted meanwhile are kept and the duplicate KV is simply freed.
        Returns the nodes of ``segments`` (locked: the caller holds them).
        """
        node = parent_path[-1] if parent_path else self.root
        added: list[_Node] = []
        for key, tokens in segments:
            child = node.children.get(key)
            if child is None:
                child = _Node(key, tokens, node, next(self._ids))
                node.children[key] = child
                self.tree_tokens += tokens
                self._nodes += 1
                self.version += 1
            added.append(child)
            node = child
        self.lock(added)
        self._touch(added)
        self.release(private)
        self._check()
        return added

    def stats(self) -> CacheStats:
        return CacheStats(self.capacity, self.max_used, self.evicted_tokens, self.evictions)

    # ------------------------------------------------------------ private

    def _touch(self, nodes: Sequence[_Node]) -> None:
        tick = next(self._tick)
        for node in nodes:
            node.access = tick
        if nodes:
            self._push_if_leaf(nodes[-1])

    def _push_if_leaf(self, node: _Node) -> None:
        if node.lock == 0 and not node.children and node.alive:
            heapq.heappush(self._leaves, (node.access, node.nid, node))
            if len(self._leaves) > 4 * self._nodes + 64:
                self._leaves = [e for e in self._leaves if self._valid(e)]
                heapq.heapify(self._leaves)

    @staticmethod
    def _valid(entry: tuple[int, int, _Node]) -> bool:
        access, _, node = entry
        return node.alive and node.lock == 0 and not node.children and node.access == access

    def _evict(self, tokens: int) -> None:
        freed = 0
        while freed < tokens:
            if not self._leaves:
                raise CapacityError("nothing evictable although the pool said there was")
            entry = heapq.heappop(self._leaves)
            if not self._valid(entry):
                continue
            node = entry[2]
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            node.alive = False
            self._nodes -= 1
            self.version += 1
            self.tree_tokens -= node.tokens
            self.evicted_tokens += node.tokens
            self.evictions += 1
            freed += node.tokens
            if parent is not self.root:
                self._push_if_leaf(parent)

    def _check(self) -> None:
        used = self.used
        if used > self.capacity:
            raise CapacityError(f"KV pool over capacity: {used} > {self.capacity} tokens")
        self.max_used = max(self.max_used, used)
