"""Spec trees (torch-free): dotted-path get/set, display labels of paths, canonical JSON and the spec hash."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from nc_core.spec import RunSpec, field_paths


def short_names(paths: list[str]) -> list[str]:
    """Display labels of spec paths: the last part ('model.width' → 'width'; 'loss.name' → 'loss'), or the
    whole path where two labels would collide ('head.depth_linear', 'ufm.depth_linear')."""
    labels = [p.split(".")[0] if p.endswith(".name") and p.count(".") == 1 else p.split(".")[-1] for p in paths]
    return [label if labels.count(label) == 1 else p for label, p in zip(labels, paths)]


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a nested dict, creating sub-dicts."""
    parts = path.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def canonical_text(tree: dict[str, Any]) -> str:
    """A JSON tree as canonical text: sorted keys, no spaces."""
    return json.dumps(tree, sort_keys=True, separators=(",", ":"))


def canonical_json(spec: RunSpec) -> str:
    """The spec as JSON with sorted keys and every default included: the input of spec_hash."""
    return canonical_text(spec.model_dump(mode="json"))


def spec_hash(spec: RunSpec) -> str:
    """sha256 of the canonical JSON (sorted keys, defaults included)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def spec_changes(stored: dict[str, Any], spec: RunSpec, limit: int = 3) -> str:
    """The leaf fields where ``spec`` differs from a stored spec tree, as "epochs 1000 → 1200, optim.lr 0.1 →
    0.05" (at most ``limit``, then "and n more"); "" when none can be named (an older spec format)."""
    tree = spec.model_dump(mode="json")
    diffs = [f"{p} {get_path(stored, p)!r} → {get_path(tree, p)!r}" for p in field_paths()
             if get_path(stored, p) != get_path(tree, p)]
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def copy_tree(node: Any) -> Any:
    """Deep copy of a JSON-like tree (dicts and lists; leaves are immutable)."""
    if isinstance(node, dict):
        return {k: copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [copy_tree(v) for v in node]
    return node
