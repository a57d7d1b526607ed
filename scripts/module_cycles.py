#!/usr/bin/env python3
"""Lists import cycles between the modules (files) of the workspace's crates.

A module is one .rs file; `a -> b` when `a` names `b` in a `use` (through
`crate::`, `super::` or `self::` paths, `pub use` re-exports included) or
in a `crate::`/`super::` path inline in its code. A
cycle is a strongly connected set of two or more modules. Exits 1 when it
finds one. Usage: python3 scripts/module_cycles.py [crate_src_dir ...]
"""
import os
import re
import sys

CRATES = ["engine/src", "ops/src", "src"]


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def use_paths(text):
    """Every path a `use` item names (braces expanded), and every
    `crate::`/`super::` path written inline in the code."""
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    out = []
    for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", code, re.M):
        out.extend(expand(m.group(1).replace("\n", " ")))
    out.extend(m.group(0) for m in re.finditer(r"\b(?:crate|super)(?:::\w+)+", code))
    return out


def expand(tree):
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [tree.split(" as ")[0].strip()]
    prefix, body = tree[:i], tree[i + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for c in body:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += c == "{"
        depth -= c == "}"
        cur += c
    parts.append(cur)
    return [p for part in parts if part.strip() for p in expand(prefix + part.strip())]


def resolve(path, here, modules, is_dir_module):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        # `self` is the module the file defines, whether it is `x.rs` or
        # `x/mod.rs`; each `super` goes one module up.
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    target = base
    for s in segs:
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target if target in modules else None


def cycles(root):
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                files[module_of(root, p)] = p
    modules = set(files)
    edges = {m: set() for m in modules}
    for m, p in files.items():
        is_dir = os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs")
        text = open(p, encoding="utf-8").read()
        # Test modules may import their parent; they are not part of the graph.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        for u in use_paths(text):
            t = resolve(u, m, modules, is_dir)
            if t is not None and t != m and not is_ancestor(t, m):
                edges[m].add(t)
    return [c for c in scc(edges) if len(c) > 1]


def is_ancestor(a, b):
    """`b` inside `a`: a child naming its parent's items is not a cycle
    unless the parent names the child back through another route."""
    return len(a) < len(b) and b[: len(a)] == a


def scc(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    found = False
    for root in sys.argv[1:] or CRATES:
        for c in cycles(root):
            found = True
            names = sorted("::".join(m) or "(crate root)" for m in c)
            print(f"{root}: cycle between {', '.join(names)}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
