"""Regenerate calib_data/ from photos shipped in scikit-image / scikit-learn wheels.

Usage: python tools/make_calib_data.py [OUT_DIR]   (default: calib_data next to this folder)
"""
from __future__ import annotations

import os
import sys

from imageset import make_calib_set


def main(argv: list[str]) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = argv[0] if argv else os.path.join(root, "calib_data")
    rows = make_calib_set(out_dir)
    total = sum(os.path.getsize(os.path.join(out_dir, r["file"])) for r in rows)
    print(f"wrote {len(rows)} images ({total / 1e6:.2f} MB) and README.md to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
