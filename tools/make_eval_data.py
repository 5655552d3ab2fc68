"""Regenerate eval_data/: seeded augmentations of photos that are not in calib_data/.

Usage: python tools/make_eval_data.py [OUT_DIR] [--seed N]   (default: eval_data/, seed 20240611)
"""
from __future__ import annotations

import argparse
import os
import sys

from imageset import EVAL_SEED, make_eval_set


def main(argv: list[str]) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=os.path.join(root, "eval_data"))
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args(argv)
    rows = make_eval_set(args.out_dir, seed=args.seed)
    total = sum(os.path.getsize(os.path.join(args.out_dir, r["file"])) for r in rows)
    print(f"wrote {len(rows)} images ({total / 1e6:.2f} MB), manifest.json and README.md "
          f"to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
