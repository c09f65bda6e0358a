"""Images: a class-conditional U-Net on scikit-learn's 8x8 digits; one column per digit.

Labels are dropped 10% of the time in training, so the same network gives the unconditional
score and samples use classifier-free guidance with weight --guidance.

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
parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance w")
args = parser.parse_args()

run = tempfile.mkdtemp(prefix="scoresde-digits-")
scoresde.train(run, data="digits", sde="vp", steps=50 if args.quick else 8000, batch_size=128,
               lr=2e-3, conditional=True)
model, sde, config = scoresde.load_run(run)
with torch.no_grad():
    labels = torch.arange(80) % 10  # row-major in a 10-column grid: column k is digit k
    score = scoresde.classifier_free_guidance(model, labels, w=args.guidance)
    x, info = scoresde.sample(score, sde, (80, 1, 8, 8), solver="dpmpp_2m",
                              steps=10 if args.quick else 25,
                              generator=torch.Generator().manual_seed(0))
print(f"80 digits, 8 of each class, NFE {info['nfe']}")
fig = plotting.image_grid_figure(x, title=f"digits 0-9 by column, w = {args.guidance:g}, "
                                 f"NFE {info['nfe']}", ncol=10)
print("wrote", plotting.save_figure(fig, args.out))
