#!/usr/bin/env python3
"""Checks that oft's headers include only down their floors, and that nothing includes itself.

The headers under include/oft/ live on floors, from the bottom:

  0 core      include/oft/*.hpp, include/oft/detail/ (half.hpp, the 16-bit floats, is here)
  1 backends  include/oft/cpu/, include/oft/cuda/
  2 quant     include/oft/quant/
  3 io        include/oft/io/
  4 fronts    tools/, python/ (outside include/oft/: nothing in include/oft/ may include them)

The rule: a header may include headers of its own floor or of lower floors, never of a higher
one (a "climb"), and the two backends do not include each other. Two kinds of exception, each
named here so that a new one is a decision and not an accident:

  * Public faces. A top-level header may include its own backend's room: `X.hpp` may include
    `cpu/X.hpp` or `cuda/X.hpp` (e.g. block_orthogonal.hpp brings cpu/block_orthogonal.hpp, so
    that `#include <oft/block_orthogonal.hpp>` keeps working), and an umbrella `R.hpp` named after
    a room R (cuda.hpp, quant.hpp, io.hpp) may include that room.
  * ALLOWED below: single edges with the reason they are there.

Includes are the `#include "..."` lines (resolved against the including file's folder, then
include/) and `#include <oft/...>` lines; system and third-party headers are ignored. A cycle
among the headers is an error too. Prints the floors and one line per violation; exits 1 when
there is any, 0 otherwise.

Usage: scripts/check_includes.py [REPO_ROOT]   (default: the folder above this script)
"""

import os
import re
import sys

FLOORS = [
    (0, "core", "include/oft/*.hpp, include/oft/detail/"),
    (1, "backends", "include/oft/cpu/, include/oft/cuda/"),
    (2, "quant", "include/oft/quant/"),
    (3, "io", "include/oft/io/"),
    (4, "fronts", "tools/, python/"),
]
ROOMS = {"detail": 0, "cpu": 1, "cuda": 1, "quant": 2, "io": 3, "tools": 4, "python": 4}

# (including header, included header), both relative to include/oft/, with why it is allowed.
ALLOWED = {
    ("cuda/qoft_linear.hpp", "quant/frozen_base.hpp"):
        "the GPU QOFT layer uploads quant's CPU frozen bases (which validate the tensors); it is "
        "the CUDA specialization of a quant type",
    ("cayley_neumann.hpp", "cpu/gemm_tile.hpp"):
        "the CPU math of the Neumann parameterizations (detail::ParameterizationOps, CPU-only) "
        "multiplies b x b blocks with the CPU register-tile kernel, several times faster than "
        "Eigen's product at OFT's block sizes",
}

INCLUDE = re.compile(r'^\s*#\s*include\s*(?:"([^"]+)"|<(oft/[^>]+)>)', re.M)


def room_of(rel):
    """The room of a header path relative to include/oft/ ("" for a top-level header)."""
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else ""


def floor_of(rel):
    return ROOMS.get(room_of(rel), 0)


def face_exception(src, dst):
    """A top-level face including its own backend's room, or an umbrella including its room."""
    if room_of(src) != "":
        return False
    stem = src[:-len(".hpp")]
    dst_room = room_of(dst)
    if dst_room in ("cpu", "cuda") and dst == f"{dst_room}/{src}":
        return True
    return stem == dst_room


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), ".."))
    base = os.path.join(root, "include", "oft")
    headers = {}
    for folder, _, files in os.walk(base):
        for name in files:
            if name.endswith((".hpp", ".h", ".cuh")):
                path = os.path.join(folder, name)
                headers[os.path.relpath(path, base).replace(os.sep, "/")] = path

    edges = {}
    problems = []
    for rel, path in sorted(headers.items()):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        targets = []
        for quoted, angled in INCLUDE.findall(text):
            if angled:
                target = angled[len("oft/"):]
            else:
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), quoted))
                if not resolved.startswith(base + os.sep):
                    if os.path.exists(resolved) or not quoted.startswith("."):
                        # Outside include/oft/ (tools/, python/, a relative climb): a climb to
                        # the fronts when it exists there; else a third-party header.
                        if os.path.exists(resolved):
                            problems.append(f"climb: include/oft/{rel} includes {quoted} "
                                            f"(outside include/oft/, floor 4 fronts)")
                        continue
                target = os.path.relpath(resolved, base).replace(os.sep, "/")
            if target not in headers:
                continue  # a system or third-party header of the same name
            targets.append(target)
        edges[rel] = targets

    for src, targets in sorted(edges.items()):
        for dst in targets:
            src_floor, dst_floor = floor_of(src), floor_of(dst)
            sibling = {room_of(src), room_of(dst)} == {"cpu", "cuda"}
            if dst_floor <= src_floor and not sibling:
                continue
            if face_exception(src, dst) or (src, dst) in ALLOWED:
                continue
            what = "backend includes the other backend" if sibling else "climb"
            problems.append(f"{what}: include/oft/{src} (floor {src_floor} "
                            f"{FLOORS[src_floor][1]}) includes include/oft/{dst} "
                            f"(floor {dst_floor} {FLOORS[dst_floor][1]})")

    # Cycles: depth-first search, reporting each cycle once by its path.
    state = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                problems.append("cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in state:
            visit(node)

    print("oft include floors (a header includes only its own floor or lower):")
    for number, name, where in FLOORS:
        count = sum(1 for rel in headers if floor_of(rel) == number)
        shown = f"{count} headers" if number < 4 else "outside include/oft/"
        print(f"  {number} {name:<8} {where:<40} {shown}")
    faces = sorted(f"{s} -> {d}" for s, ts in edges.items() for d in ts
                   if floor_of(d) > floor_of(s) and face_exception(s, d))
    print(f"public faces including their room: {len(faces)} edges "
          f"({', '.join(sorted({f.split(' -> ')[0] for f in faces}))})")
    for (src, dst), why in sorted(ALLOWED.items()):
        if dst in edges.get(src, []):
            print(f"allowed: {src} -> {dst}: {why}")
    edge_count = sum(len(t) for t in edges.values())
    if problems:
        for line in problems:
            print(line)
        print(f"FAILED: {len(problems)} violation(s) among {len(headers)} headers, "
              f"{edge_count} includes")
        return 1
    print(f"OK: {len(headers)} headers, {edge_count} includes, no climbs, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
