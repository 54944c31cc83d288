#!/usr/bin/env python3
"""A model of cache affinity under bounded loads: why "90 % of builds on their project's
home agent" and "no agent above ceil(c × average)" cannot both hold at c = 1.25.

Not Kiln's code and not a benchmark of it (`kiln-bench farm --only affinity` measures the
real farm). It replays the dispatcher's placement rule on a ring of the same shape (20
agents of capacity 4, 64 virtual nodes per slot; a different hash, so not the same homes)
with Poisson arrivals and uniform 0.2-1 s durations, and prints, per popularity and load,
the share of builds placed on their home agent and the share placed on an agent where
their project had already run (warm mirror and Maven cache).

Rule (Sources/Scheduler/HashRing.swift): walk the ring from the project's hash; take the
first agent whose running builds are below min(capacity, ceil(c × (m + 1) × w / W)).

    python3 Benchmarks/affinity-model.py [--builds N]
"""
import argparse
import bisect
import hashlib
import heapq
import math
import random

AGENTS, CAPACITY, VNODES = 20, 4, 64


def h(s):
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def ring_walks(agents, projects):
    points = sorted((h(f"{a}#{v}"), a) for a in agents for v in range(VNODES * CAPACITY))
    hashes = [p[0] for p in points]
    walks = {}
    for p in projects:
        i, seen = bisect.bisect_left(hashes, h(p)), []
        for k in range(len(points)):
            a = points[(i + k) % len(points)][1]
            if a not in seen:
                seen.append(a)
                if len(seen) == len(agents):
                    break
        walks[p] = seen
    return walks


def run(walks, weights, c, load, builds, seed=1):
    rnd = random.Random(seed)
    agents = walks[next(iter(walks))]
    slots = len(agents) * CAPACITY
    rate = load * slots / 0.6
    projects = list(walks)
    running = {a: 0 for a in agents}
    ends, m, t = [], 0, 0.0
    home = placed = warm = comparable = 0
    ran_on = {}
    for _ in range(builds):
        t += rnd.expovariate(rate)
        while ends and ends[0][0] <= t:
            _, a = heapq.heappop(ends)
            running[a] -= 1
            m -= 1
        p = rnd.choices(projects, weights)[0]
        bound = min(CAPACITY, max(1, math.ceil(c * (m + 1) * CAPACITY / slots)))
        pick = next((a for a in walks[p] if running[a] < bound), None)
        if pick is None:
            continue  # would wait in the queue
        placed += 1
        home += pick == walks[p][0]
        if p in ran_on:
            comparable += 1
            warm += pick in ran_on[p]
        ran_on.setdefault(p, set()).add(pick)
        running[pick] += 1
        m += 1
        heapq.heappush(ends, (t + rnd.uniform(0.2, 1.0), pick))
    return home / placed, warm / max(1, comparable)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builds", type=int, default=10000)
    args = ap.parse_args()
    agents = [f"agent-{i}" for i in range(AGENTS)]
    print(f"{AGENTS} agents x capacity {CAPACITY}; {args.builds} builds per row")
    print(f"{'popularity':<16}{'projects':>9}{'load':>6}{'c':>6}{'home':>8}{'warm':>8}")
    for s in (0.0, 1.1):
        for n in (200, 1000):
            projects = [f"aff-{k:04d}" for k in range(n)]
            weights = [1 / (k + 1) ** s for k in range(n)]
            walks = ring_walks(agents, projects)
            for load in (0.25, 0.5):
                for c in (1.25, 2.0):
                    home, warm = run(walks, weights, c, load, args.builds)
                    name = "uniform" if s == 0 else f"Zipf({s})"
                    print(f"{name:<16}{n:>9}{load:>6}{c:>6}{home:>8.1%}{warm:>8.1%}")


if __name__ == "__main__":
    main()
