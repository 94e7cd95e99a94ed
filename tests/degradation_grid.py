"""Every degradation family alone on a synthetic face, at the bottom, middle and top of its default range, beside
the region it acts in: the notebook's own family_grid, for the README (CelebA-HQ cannot be downloaded here).

Usage: python tests/degradation_grid.py [OUTPUT_PNG] [SIZE]   (default results/degradation_families.png 256)"""
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_library import ROOT, elite  # noqa: E402  (the notebook's export cells)

if __name__ == "__main__":
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "results" / "degradation_families.png"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    face = elite.to_model_range(np.asarray(elite.synthetic_face(random.Random(1), size))[None])[0]
    elite.family_grid(face, elite.Config(), seed=0).save(output, optimize=True)
    print(f"wrote {output}")
