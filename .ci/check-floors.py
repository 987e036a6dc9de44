#!/usr/bin/env python3
"""Checks that the interposer (crates/gpuslice-interposer/src) keeps to its floors.

Every source file is given a floor by the FLOORS table below (top floor first: the entry
points, then the hooks, then the process and the slice, then the ground floor that calls
the real driver). A file may use files of its own floor or of floors below it; it may
never use a file of a floor above it, and no files may use each other in a circle.

The import graph is drawn between files, simply:
  * a file uses module M when its text names `crate::M...` (or `$crate::M...` in a macro),
    including each item of a `use crate::{a, b::c}` group, or `super::M...` (resolved from
    the module the text sits in, inline `mod name { ... }` blocks included);
  * a path names the deepest module that has a file (`crate::hooks::alloc::x` is
    hooks/alloc.rs if it exists, else hooks/mod.rs or hooks.rs);
  * a `mod m;` declaration is a use of the declared file (a parent uses its children),
    except a `#[cfg(test)]` one: a unit-test file is not part of the library, and it
    uses its parent (`use super::*`);
  * comments are ignored; a file's use of itself is not an edge.

It prints the number of circles (groups of files that use each other, found as strongly
connected components of more than one file), every up-floor import, the largest file in
lines and the file list by floor. It fails (exit 1) on a circle, an up-floor import or a
file the table does not place.

Run from anywhere: python3 .ci/check-floors.py [SRC_DIR]
"""

import fnmatch
import os
import re
import signal
import sys

# Piped into `head`, stop quietly like any other command line tool.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

# Floors, top first: (number, name, file patterns relative to src/). Higher numbers are
# higher floors; a file may use files whose floor number is lower or equal.
FLOORS = [
    (6, "crate root", ["lib.rs"]),
    (5, "entry points: dlsym, cuGetProcAddress, the hook addresses", ["entry.rs"]),
    (
        4,
        "hooks by path, the gated launches, the NVML view",
        ["hooks/*.rs", "launch.rs", "nvml_view/*.rs", "smi_ioctl.rs"],
    ),
    (3, "the process: mode, the slice singleton, fork and exit", ["process.rs"]),
    (
        2,
        "the slice's accounting, the compute gate, what it asks NVML and the agent",
        [
            "slice.rs",
            "slice/*.rs",
            "books.rs",
            "compute.rs",
            "meter.rs",
            "nvml.rs",
            "presence.rs",
            "agent_client.rs",
        ],
    ),
    (
        1,
        "ground floor: the real driver, the table, the C types, logging",
        ["real.rs", "table.rs", "ffi.rs", "log.rs", "lock.rs"],
    ),
]

COMMENT = re.compile(r"//[^\n]*")
IDENT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")
CRATE_REF = re.compile(r"(?<![A-Za-z0-9_])\$?crate::")
SUPER_REF = re.compile(r"(?<![A-Za-z0-9_:])((?:super::)+)")
MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)
INLINE_MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{", re.M)


def module_of(rel):
    """The module path (list of names) of a file relative to src/."""
    parts = rel[:-3].split("/")
    if parts == ["lib"]:
        return []
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_comments(text):
    """The text with `//` comments blanked (kept the same length, so offsets hold)."""
    return COMMENT.sub(lambda m: " " * len(m.group(0)), text)


def inline_modules(text):
    """(start, end, name) of every inline `mod name { ... }` block, by brace matching."""
    blocks = []
    for m in INLINE_MOD.finditer(text):
        depth = 0
        i = m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        blocks.append((m.end(), i, m.group(1)))
    return blocks


def module_at(base, blocks, offset):
    """The module path of the code at `offset` of a file whose module is `base`."""
    inner = [(s, name) for s, e, name in blocks if s <= offset <= e]
    return base + [name for _, name in sorted(inner)]


def referenced_paths(text, at):
    """(offset, path) of each module path the text names after `at` (a `crate::` or a
    `super::` prefix): one plain path, or each item of a `{...}` group."""
    if at < len(text) and text[at] == "{":
        depth, i = 0, at
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        body = text[at + 1 : i]
        items, depth, start = [], 0, 0
        for j, c in enumerate(body + ","):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 0:
                item = body[start:j].strip()
                m = IDENT_PATH.match(item)
                if m:
                    items.append(m.group(0).split("::"))
                start = j + 1
        return items
    m = IDENT_PATH.match(text, at)
    return [m.group(0).split("::")] if m else []


def resolve(path, files_by_module):
    """The file of the deepest module named by `path` (a list of names), or None."""
    for n in range(len(path), 0, -1):
        key = tuple(path[:n])
        if key in files_by_module:
            return files_by_module[key]
    return None


def floor_of(rel):
    for number, _, patterns in FLOORS:
        if any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            return number
    return None


def sccs(nodes, edges):
    """Strongly connected components (Tarjan), iteratively."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                result.append(sorted(component))
    return result


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "crates", "gpuslice-interposer", "src")
    src = os.path.normpath(src)
    files = []
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                files.append(os.path.relpath(os.path.join(dirpath, name), src).replace(os.sep, "/"))
    files.sort()
    if not files:
        print(f"check-floors: no .rs files under {src}")
        return 1
    files_by_module = {tuple(module_of(f)): f for f in files}
    edges, lines = {}, {}
    for rel in files:
        with open(os.path.join(src, rel), encoding="utf-8") as fh:
            raw = fh.read()
        lines[rel] = raw.count("\n") + (0 if raw.endswith("\n") else 1)
        text = strip_comments(raw)
        base = module_of(rel)
        blocks = inline_modules(text)
        used = set()
        for m in CRATE_REF.finditer(text):
            for path in referenced_paths(text, m.end()):
                target = resolve(path, files_by_module)
                if target:
                    used.add(target)
        for m in SUPER_REF.finditer(text):
            levels = m.group(1).count("super::")
            here_module = module_at(base, blocks, m.start())
            parent = here_module[: max(0, len(here_module) - levels)]
            for path in referenced_paths(text, m.end()):
                target = resolve(parent + path, files_by_module) or files_by_module.get(tuple(parent))
                if target:
                    used.add(target)
            if text.startswith("*", m.end()):
                target = files_by_module.get(tuple(parent))
                if target:
                    used.add(target)
        for m in MOD_DECL.finditer(text):
            if text[: m.start()].rstrip().endswith("#[cfg(test)]"):
                continue
            here_module = module_at(base, blocks, m.start())
            target = files_by_module.get(tuple(here_module + [m.group(1)]))
            if target:
                used.add(target)
        used.discard(rel)
        edges[rel] = used

    failed = False
    unplaced = [f for f in files if floor_of(f) is None]
    circles = [c for c in sccs(files, edges) if len(c) > 1]
    up = sorted(
        (f, t)
        for f in files
        for t in edges[f]
        if floor_of(f) is not None and floor_of(t) is not None and floor_of(t) > floor_of(f)
    )

    print(f"circles: {len(circles)}")
    for c in circles:
        print(f"  circle of {len(c)} files: {', '.join(c)}")
    print(f"up-floor imports: {len(up)}")
    for f, t in up:
        print(f"  {f} (floor {floor_of(f)}) uses {t} (floor {floor_of(t)})")
    largest = max(files, key=lambda f: lines[f])
    print(f"largest file: {largest} ({lines[largest]} lines)")
    print("files by floor:")
    for number, name, _ in FLOORS:
        members = [f for f in files if floor_of(f) == number]
        print(f"  {number} {name}:")
        for f in members:
            print(f"      {f} ({lines[f]} lines)")
    if unplaced:
        print("  not placed by the table (add them to FLOORS in .ci/check-floors.py):")
        for f in unplaced:
            print(f"      {f} ({lines[f]} lines)")
        failed = True
    if circles or up:
        failed = True
    print("check-floors: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
