"""Images: a small U-Net on scikit-learn's 8x8 digits, sampled and drawn as a grid.

    python examples/digits.py            # several minutes on a CPU
    python examples/digits.py --quick    # under a minute, blurry digits
"""

import argparse
import tempfile

import torch

import scoresde
from scoresde import plotting

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", default="digits.png")
args = parser.parse_args()

run = tempfile.mkdtemp(prefix="scoresde-digits-")
scoresde.train(run, data="digits", sde="vp", steps=50 if args.quick else 8000, batch_size=128,
               lr=2e-3)
model, sde, config = scoresde.load_run(run)
with torch.no_grad():
    x, info = scoresde.sample(model, sde, (64, 1, 8, 8), solver="dpmpp_2m",
                              steps=10 if args.quick else 25,
                              generator=torch.Generator().manual_seed(0))
print(f"64 digits, NFE {info['nfe']}")
fig = plotting.image_grid_figure(x, title=f"dpmpp_2m, NFE {info['nfe']}")
print("wrote", plotting.save_figure(fig, args.out))
