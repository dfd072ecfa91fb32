#!/usr/bin/env python3
"""Where a P2P benchmark run spent its time, from the nodes' debug logs.

Run bench/p2p.sh with P2P_NODE_LOG=info,wharf_p2p=debug, then:

    bench/p2p-spread.py bench/out/p2p-raw/<run>/<case>     # e.g. .../48x20M-p2p

Prints, per 2 s from the first piece: fetches started, and the mean time a piece took from a
peer and from the origin; then, for every 8th piece in the order the origin delivered them,
how long after it left the origin half of the nodes, and all of them, held it (the spread
time: a node finishes about this long after the origin's last piece).
"""
import collections
import datetime
import glob
import os
import re
import statistics
import sys

LINE = re.compile(r'(\S+) DEBUG .*piece (fetch started|stored) task=(\S+) piece=(\d+) from="?([^"\s]+)')


def stamp(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main(case_dir):
    events = []
    for path in glob.glob(os.path.join(case_dir, "n*.log")):
        node = os.path.basename(path)[:-4]
        with open(path) as f:
            for line in f:
                m = LINE.match(line)
                if m:
                    events.append((stamp(m[1]), node, m[2], m[3], int(m[4]), m[5]))
    if not events:
        sys.exit(f"no piece events in {case_dir}/n*.log (run the bench with P2P_NODE_LOG=info,wharf_p2p=debug)")
    events.sort()
    t0 = events[0][0]
    started = {}
    durations = collections.defaultdict(list)
    held = collections.defaultdict(dict)
    from_origin = {}
    for t, node, kind, task, piece, source in events:
        key = (node, task, piece)
        if kind == "fetch started":
            started[key] = t
            continue
        begin = started.get(key, t)
        durations[int((begin - t0) // 2) * 2].append((t - begin, source == "origin"))
        held[(task, piece)][node] = t - t0
        if source == "origin":
            from_origin[(task, piece)] = t - t0
    print(" from s  fetches  peer piece s  origin piece s")
    for sec in sorted(durations):
        peer = [d for d, o in durations[sec] if not o]
        origin = [d for d, o in durations[sec] if o]
        mean = lambda xs: f"{statistics.mean(xs):.2f}" if xs else "-"
        print(f"{sec:7d} {len(durations[sec]):8d} {mean(peer):>13} {mean(origin):>15}")
    print("\n origin s  half the nodes +s  all nodes +s  nodes")
    ordered = sorted(from_origin.items(), key=lambda kv: kv[1])
    for (key, at) in ordered[::8] + ordered[-1:]:
        times = sorted(held[key].values())
        print(f"{at:9.1f} {times[len(times) // 2] - at:19.1f} {times[-1] - at:13.1f} {len(times):6d}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
