"""Summarise a py-spy "raw" (folded stacks) recording: where the gateway's threads spend their samples.

    python bench/spy_summary.py bench/out/spy/gateway-together.folded [--top 25] [--thread-filter Thread]

Prints, per thread kind, the share of samples, then the functions with the most samples anywhere on the stack
(inclusive) and at the top of the stack (self), so that waits (locks, fsync, sockets) and CPU show apart.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path


def frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def short(frame: str) -> str:
    match = re.match(r"(.*?) \((.*?):(\d+)\)", frame)
    if not match:
        return frame
    name, path, _ = match.groups()
    return f"{name} ({Path(path).name})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.file.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = frames(line)
        total += count
        threads[short(stack[0])] += count
        for name in {short(f) for f in stack}:
            inclusive[name] += count
        own[short(stack[-1])] += count
    print(f"{total} samples")
    print("\nthreads:")
    for name, count in threads.most_common(12):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ninclusive (on the stack):")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\nself (top of the stack):")
    for name, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
