#!/usr/bin/env python3
"""A tree of many small files, the other shape a volume takes (uploads, a CMS's media, a mail
store, a package cache), for bench/compare.sh (DATASET=files). Deterministic.

  gen-files.py day1 DIR --files N   # N files in directories of 500, 100 B to 16 KiB each
  gen-files.py mutate DIR           # day 2: 1 % rewritten, 1 % appended to, 1 % new, 0.5 % removed

Sizes are log-uniform; contents are lines of words (compressible, like text and JSON) or, for
one file in five, random bytes (like thumbnails). Directories are nested two deep.
"""
import argparse
import os
import random

WORDS = ("id name email status created updated amount currency order payment user item "
         "price total note address city country zip phone true false null").split()


def content(rng, size):
    if rng.random() < 0.2:
        return rng.randbytes(size)
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) + str(rng.randrange(10000)) for _ in range(8)) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def size_of(rng):
    return int(100 * (164 ** rng.random()))  # 100 B .. 16 KiB, log-uniform


def path_of(i):
    return os.path.join("d%03d" % (i // 5000), "s%02d" % (i // 500 % 10), "f%06d.dat" % i)


def cmd_day1(root, seed, files):
    rng = random.Random(seed)
    for i in range(files):
        p = os.path.join(root, path_of(i))
        if i % 500 == 0:
            os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(content(rng, size_of(rng)))


def cmd_mutate(root, seed):
    rng = random.Random(seed)
    names = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, fs in os.walk(root) for f in fs)
    picks = rng.sample(names, len(names) * 35 // 1000)
    k = len(names) // 100
    for name in picks[:k]:
        with open(os.path.join(root, name), "wb") as f:
            f.write(content(rng, size_of(rng)))
    for name in picks[k:2 * k]:
        with open(os.path.join(root, name), "ab") as f:
            f.write(content(rng, 200))
    for name in picks[2 * k:2 * k + k // 2]:
        os.remove(os.path.join(root, name))
    new = os.path.join(root, "new")
    os.makedirs(new, exist_ok=True)
    for i in range(k):
        with open(os.path.join(new, "n%06d.dat" % i), "wb") as f:
            f.write(content(rng, size_of(rng)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["day1", "mutate"])
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--files", type=int, default=200000)
    a = ap.parse_args()
    if a.cmd == "day1":
        cmd_day1(a.dir, 20261205 if a.seed is None else a.seed, a.files)
    else:
        cmd_mutate(a.dir, 20261206 if a.seed is None else a.seed)


if __name__ == "__main__":
    main()
