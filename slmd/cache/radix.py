"""A radix tree over token ids whose nodes say where a prefix's KV lives.

Each stored sequence (a "holder") is a whole KV stream of the runtime: the
tokens from the root down to the holder's node are in that stream, so any
holder in a node's subtree can serve the node's prefix. Holders are either
on the device (a sequence id) or in host memory (a saved state).

Lock counts protect holders that a running step is copying from. Testable
without a runtime: values are plain data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Union


@dataclass
class DeviceKV:
    seq_id: int
    # leading tokens whose KV was computed exactly as a cold solo run computes
    # them (deterministic requests, chunk-aligned); only these serve
    # deterministic requests, whose output must equal a cold run bit for bit
    exact: int = 0


@dataclass
class HostKV:
    data: bytes
    num_tokens: int
    exact: int = 0

    @property
    def num_bytes(self) -> int:
        return len(self.data)


@dataclass
class PendingSave:
    """A device holder on its way to the host tier: not matchable, not evictable."""

    seq_id: int
    exact: int = 0


Holder = Union[DeviceKV, HostKV, PendingSave]


@dataclass(eq=False)
class Node:
    key: tuple[int, ...] = ()  # the edge's tokens, from the parent to this node
    parent: "Node | None" = None
    children: dict[int, "Node"] = field(default_factory=dict)
    holder: Holder | None = None
    lock_ref: int = 0
    last_access: float = field(default_factory=time.monotonic)
    priority: int = 0  # highest priority of the requests that used it
    depth: int = 0  # tokens from the root to the end of this node

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def tokens(self) -> list[int]:
        parts = []
        node = self
        while node is not None and node.parent is not None:
            parts.append(node.key)
            node = node.parent
        return [t for part in reversed(parts) for t in part]


@dataclass(frozen=True)
class Match:
    num_tokens: int
    node: Node | None  # the deepest node the match reaches into (may be partial)
    source: Node | None  # a node with a holder in that subtree

    @property
    def is_hit(self) -> bool:
        return self.num_tokens > 0 and self.source is not None


def _common(a: tuple[int, ...], b, start: int) -> int:
    n = min(len(a), len(b) - start)
    i = 0
    while i < n and a[i] == b[start + i]:
        i += 1
    return i


class RadixTree:
    def __init__(self) -> None:
        self.root = Node()
        self.root.lock_ref = 1  # the root is never evicted

    def match(self, tokens) -> Match:
        node, pos = self.root, 0
        deepest: Node | None = None
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = _common(child.key, tokens, pos)
            pos += n
            deepest = child
            if n < len(child.key):
                break
            node = child
        # the deepest node whose subtree still holds KV serves the match (a
        # holder on its way to the host tier leaves only its ancestors usable)
        node, length = deepest, pos
        while node is not None and node is not self.root:
            source = self._any_holder(node)
            if source is not None:
                return Match(length, node, source)
            node = node.parent
            length = node.depth if node is not None else 0
        return Match(0, None, None)

    def _any_holder(self, node: Node) -> Node | None:
        """Prefer a device holder (copy) over a host one (restore)."""
        best = None
        for n in self._subtree(node):
            if isinstance(n.holder, DeviceKV):
                return n
            if isinstance(n.holder, HostKV) and best is None:
                best = n
        return best

    def _subtree(self, node: Node) -> Iterator[Node]:
        stack = [node]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def insert(self, tokens, holder: Holder, priority: int = 0) -> tuple[Node, list[Holder]]:
        """Store `tokens` held by `holder`. Returns the node and the holders
        made redundant (a holder whose tokens are a prefix of another's adds
        nothing); the caller frees those. If `tokens` are already covered,
        the new holder itself comes back as redundant."""
        node, pos = self.root, 0
        now = time.monotonic()
        redundant: list[Holder] = []
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                new = Node(tuple(tokens[pos:]), node, depth=len(tokens), priority=priority)
                node.children[tokens[pos]] = new
                node = new
                pos = len(tokens)
                break
            n = _common(child.key, tokens, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            child.priority = max(child.priority, priority)
            node, pos = child, pos + n
        # `node` ends exactly at the end of `tokens`
        if node.children or node.holder is not None:
            return node, [holder]  # already covered by an existing, longer or equal holder
        node.holder = holder
        node.last_access = now
        # ancestors' holders are now prefixes of this one
        anc = node.parent
        while anc is not None and anc is not self.root:
            if anc.holder is not None and anc.lock_ref == 0 and not isinstance(anc.holder, PendingSave):
                redundant.append(anc.holder)
                anc.holder = None
            anc = anc.parent
        return node, redundant

    def _split(self, child: Node, n: int) -> Node:
        """Cut `child`'s edge after n tokens; return the new middle node."""
        parent = child.parent
        mid = Node(child.key[:n], parent, depth=child.depth - len(child.key) + n,
                   last_access=child.last_access, priority=child.priority)
        parent.children[child.key[0]] = mid
        child.key = child.key[n:]
        child.parent = mid
        mid.children[child.key[0]] = child
        return mid

    def lock(self, node: Node) -> None:
        while node is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while node is not None:
            node.lock_ref -= 1
            node = node.parent

    def touch(self, node: Node, priority: int = 0) -> None:
        now = time.monotonic()
        while node is not None and node is not self.root:
            node.last_access = now
            node.priority = max(node.priority, priority)
            node = node.parent

    def holders(self) -> Iterator[Node]:
        return (n for n in self._subtree(self.root) if n.holder is not None)

    def detach(self, node: Node) -> Holder:
        """Take a node's holder away and prune what no longer leads to KV."""
        holder, node.holder = node.holder, None
        self._prune(node)
        return holder

    def _prune(self, node: Node) -> None:
        while node is not self.root and node.holder is None and not node.children and node.lock_ref == 0:
            parent = node.parent
            del parent.children[node.key[0]]
            node = parent
