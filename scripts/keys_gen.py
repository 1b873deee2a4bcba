#!/usr/bin/env python3
"""Skewed sensor keys: JSON Lines events whose sensors follow a Zipf-like law.

Usage: keys_gen.py EVENTS SENSORS OUT_PATH [EXPONENT] [SEED]
       (default exponent 1.1, seed 42; OUT_PATH '-' writes to stdout)

Sensor k (1-based rank) reports with probability proportional to k^-EXPONENT: a few hot
sensors carry most events, a long tail reports rarely or never. Ids are `s-` and seven
digits whatever SENSORS is, so every size decodes the same bytes per event; the rank is
shuffled into the id, so hot sensors are not the first ids in sorted order. Each sensor
has its own level and noise; rare spikes (4-10 sigma). ts strictly increasing.
Deterministic for given arguments.
"""
import itertools
import random
import sys


def main() -> None:
    if len(sys.argv) not in (4, 5, 6):
        sys.exit(__doc__)
    n, sensors, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    exponent = float(sys.argv[4]) if len(sys.argv) > 4 else 1.1
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 42)
    if not 1 <= sensors <= 10_000_000:
        sys.exit("keys_gen.py: SENSORS must be in 1..=10000000")
    ids = ["s-%07d" % i for i in range(sensors)]
    rng.shuffle(ids)
    cum = list(itertools.accumulate(k ** -exponent for k in range(1, sensors + 1)))
    mean = [rng.uniform(-50.0, 150.0) for _ in range(sensors)]
    std = [rng.uniform(0.5, 5.0) for _ in range(sensors)]
    ranks = range(sensors)
    ts = 1_700_000_000_000
    out = sys.stdout if path == "-" else open(path, "w", buffering=1 << 20)
    gauss, rand, choices = rng.gauss, rng.random, rng.choices
    left = n
    while left > 0:
        chunk = min(left, 65536)
        left -= chunk
        lines = []
        for s in choices(ranks, cum_weights=cum, k=chunk):
            ts += 1
            if rand() < 0.004:
                v = mean[s] + (1.0 if rand() < 0.5 else -1.0) * rng.uniform(4.0, 10.0) * std[s]
            else:
                v = gauss(mean[s], std[s])
            lines.append('{"sensor_id":"%s","ts":%d,"value":%.4f}\n' % (ids[s], ts, v))
        out.write("".join(lines))
    out.flush()


if __name__ == "__main__":
    main()
