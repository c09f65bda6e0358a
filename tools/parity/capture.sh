#!/usr/bin/env bash
# Parity capture: run many `scoresde` command variants from CHECKOUT and keep their outputs.
#
#   bash tools/parity/capture.sh CHECKOUT OUTDIR
#
# OUTDIR/work/   the working folder (runs/, samples/, input files); every output file stays here
# OUTDIR/cache/  $SCORESDE_CACHE (FID reference statistics), fresh for each capture
# OUTDIR/log     one JSON record per line and command: name, args, rc, stdout, stderr, seconds
# OUTDIR/meta.json  the checkout, OUTDIR, the scoresde module imported, the total time
#
# Compare two captures with: python tools/parity/compare.py OUT_A OUT_B
#
# For a refactor that must keep every command's outputs: capture the commit before it (a
# `git worktree add`) and the working tree, one after the other on a quiet machine (about 4
# minutes each on two cores), and compare. The virtual environment is $SCORESDE_VENV, or the
# repository's .venv.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 CHECKOUT OUTDIR" >&2
    exit 2
fi
CHECKOUT=$(cd "$1" && pwd -P) || exit 2
mkdir -p "$2" || exit 2
OUTDIR=$(cd "$2" && pwd -P)
if [ -n "$(ls -A "$OUTDIR")" ]; then
    echo "$OUTDIR is not empty: give a new or empty folder" >&2
    exit 2
fi
VENV=${SCORESDE_VENV:-$(cd "$(dirname "$0")/../.." && pwd -P)/.venv}
# shellcheck disable=SC1091
source "$VENV/bin/activate"

# Determinism: one thread, CPU only, a fixed hash seed, no terminal progress, fresh caches.
export PYTHONPATH="$CHECKOUT" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
       NUMEXPR_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="" PYTHONHASHSEED=0 \
       SCORESDE_CACHE="$OUTDIR/cache" TQDM_DISABLE=1 COLUMNS=100 LC_ALL=C.UTF-8 TZ=UTC
# A shared matplotlib cache, built before any logged command (its first build says so on stderr).
export MPLCONFIGDIR=${MPLCONFIGDIR:-$OUTDIR/.mplconfig}
mkdir -p "$MPLCONFIGDIR" "$OUTDIR/work" "$OUTDIR/cache" "$OUTDIR/records"
python -c "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot" >/dev/null 2>&1

WORK="$OUTDIR/work"
cd "$WORK" || exit 2
# The checkout's package must be the one imported (not an editable install of another one).
MODULE=$(python -c "import scoresde, os; print(os.path.realpath(scoresde.__file__))")
case "$MODULE" in
    "$CHECKOUT"/*) ;;
    *) echo "scoresde imported from $MODULE, not from $CHECKOUT" >&2; exit 2 ;;
esac
echo "capturing $CHECKOUT ($MODULE) into $OUTDIR" >&2

T0=$(date +%s.%N)
# run NAME ARGS...: `python -m scoresde ARGS` in $WORK, its stdout/stderr/rc kept under records/
# as LANE+SEQ-NAME (two lanes run side by side, each in its own fixed order).
LANE=Z
SEQ=0
run() {
    local name=$1; shift
    SEQ=$((SEQ + 1))
    local rec="$OUTDIR/records/$LANE$(printf '%03d' $SEQ)-$name"
    printf '%s\0' "$@" > "$rec.args"
    local t=$(date +%s.%N)
    python -m scoresde "$@" > "$rec.stdout" 2> "$rec.stderr" < /dev/null
    local rc=$?
    echo "$rc" > "$rec.rc"
    echo "$(date +%s.%N) - $t" | bc > "$rec.seconds"
    printf '%-28s rc=%s %5.1fs  scoresde %s\n' "$name" "$rc" "$(cat "$rec.seconds")" "$*" >&2
}

# ----- inputs: deterministic files made with NumPy only -----------------------------------
mkdir -p inputs samples
python - <<'EOF'
import numpy as np
rng = np.random.default_rng(1234)
# Points conditioned on float embeddings: x (N, 2), y (N, 4).
n, e = 2048, 4
y = rng.standard_normal((n, e)).astype(np.float32)
x = (y[:, :2] * 1.5 + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
np.savez("inputs/emb_data.npz", x=x, y=y)
np.save("inputs/emb_one.npy", np.array([1.0, -0.5, 0.25, 0.0], dtype=np.float32))
np.save("inputs/emb_rows.npy", rng.standard_normal((50, e)).astype(np.float32))
# 2D imputation: the first coordinate known.
np.savez("inputs/mask2d.npz", mask=np.array([True, False]), values=np.array([1.5, 0.0]))
# Per-row 2D mask (N=50 rows).
m = np.zeros((50, 2), dtype=bool); m[::2, 0] = True; m[1::2, 1] = True
np.savez("inputs/mask2d_rows.npz", mask=m, values=rng.standard_normal((50, 2)))
# Digits imputation: the top half of an 8x8 image known.
mk = np.zeros((1, 8, 8), dtype=bool); mk[:, :4] = True
np.savez("inputs/mask_digits.npz", mask=mk, values=np.full((1, 8, 8), 0.5))
# A linear observation of 2D points: y = x0 + x1 (noisy) and a noiseless one.
np.savez("inputs/obs2d.npz", A=np.array([[1.0, 1.0]]), y=np.array([1.0]), noise_std=0.1)
np.savez("inputs/obs2d_exact.npz", A=np.array([[1.0, 0.0]]), y=np.array([-1.0]))
EOF

# Two lanes run side by side (one core each): A the vector runs, B the image runs. Nothing in
# one lane reads what the other writes; Z, after both, has the commands that see every run.
TOY="--steps 30 --batch-size 128 --width 32 --quiet"
IMG="--steps 8 --batch-size 16 --quiet"
S="--json --n 200"
ODE="--rtol 1e-3 --atol 1e-3"

lane_a() {
    LANE=A
    # ----- train: 2D and vector runs
    run train-vp              train --sde vp --data 8gaussians $TOY --run runs/vp
    run train-ve              train --sde ve --data moons $TOY --run runs/ve
    run train-subvp-lik-is    train --sde subvp --data swissroll --weighting likelihood_is $TOY --run runs/subvp
    run train-cosine-rff      train --sde cosine --data checkerboard --input-features 16 --log-snr-share 0.3 $TOY --run runs/cosine
    run train-bf16-microbatch train --data 8gaussians --precision bf16 --batch-gpu 32 --lr 0.002 --seed 3 $TOY --run runs/bf16
    run train-cond2d          train --data 8gaussians --conditional $TOY --run runs/cond2d
    run train-emb             train --data inputs/emb_data.npz --conditional --label-dropout 0.2 $TOY --run runs/emb
    run train-resume-start    train --data rings --steps 20 --checkpoint-every 10 --batch-size 64 --width 16 --quiet --run runs/resume
    run train-resume          train --resume --run runs/resume --steps 30 --quiet
    run train-resume-noop     train --resume --run runs/resume --quiet
    run train-resume-absent   train --resume --run runs/requeued --data moons --steps 5 --batch-size 32 --width 8 --quiet
    run train-progress        train --data pinwheel --steps 5 --batch-size 32 --width 8 --run runs/progress
    run err-train-exists      train --run runs/vp $TOY
    run err-train-bad-data    train --data nosuchdata --steps 2 --quiet --run runs/bad2

    # ----- sample: every solver and the options, on the 2D runs
    for solver in em pc euler heun dpmpp_2m unipc torchsde; do
        run "sample-vp-$solver"   sample --run runs/vp --solver $solver --steps 8 $S --out samples/vp-$solver.npz
    done
    run sample-vp-ode             sample --run runs/vp --solver ode $ODE $S --out samples/vp-ode.npz
    run sample-vp-ode-dop853      sample --run runs/vp --solver ode --method DOP853 $ODE --n 50 --json --out samples/vp-ode-dop853.npz
    run sample-vp-pc-knobs        sample --run runs/vp --solver pc --steps 6 --predictor ancestral --corrector ald --snr 0.1 --corrector-steps 2 $S --out samples/vp-pc-knobs.npz
    run sample-vp-em-nodenoise    sample --run runs/vp --solver em --steps 8 --no-denoise --eps 0.01 --grid log_snr $S --out samples/vp-em-nodenoise.npz
    run sample-vp-dpm-window      sample --run runs/vp --solver dpmpp_2m --steps 5 --grid log_snr --sigma-max 5 --sigma-min 0.01 $S --out samples/vp-dpm-window.npz
    run sample-vp-torchsde-adapt  sample --run runs/vp --solver torchsde --adaptive --steps 4 --rtol 0.05 --atol 0.05 --n 50 --json --out samples/vp-torchsde-adapt.npz
    run sample-vp-torchsde-milstein sample --run runs/vp --solver torchsde --method milstein --steps 6 --n 50 --json --out samples/vp-torchsde-milstein.npz
    run sample-vp-seeds           sample --run runs/vp --solver em --steps 8 --seeds 0-9 --json --out samples/vp-seeds.npz
    run sample-vp-seeds-list      sample --run runs/vp --solver em --steps 8 --seeds 0,5,9-12 --batch-size 2 --json --out samples/vp-seeds-list.npz
    run sample-vp-chunks          sample --run runs/vp --solver em --steps 8 --batch-size 64 $S --out samples/vp-chunks.npz
    run sample-vp-chunks-again    sample --run runs/vp --solver em --steps 8 --batch-size 64 $S --out samples/vp-chunks.npz
    run sample-vp-seed7           sample --run runs/vp --solver heun --steps 4 --seed 7 $S --out samples/vp-seed7.npz
    run sample-vp-text            sample --run runs/vp --solver euler --steps 4 --n 100 --out samples/vp-text.npz
    run sample-vp-default-name    sample --run runs/vp --solver euler --steps 3 --n 20 --json
    run sample-vp-default-name2   sample --run runs/vp --solver euler --steps 3 --n 20 --grid uniform --batch-size 7 --json
    run sample-ve-pc              sample --run runs/ve --solver pc --steps 8 $S --out samples/ve-pc.npz
    run sample-ve-ode             sample --run runs/ve --solver ode $ODE $S --out samples/ve-ode.npz
    run sample-ve-dpmpp           sample --run runs/ve --solver dpmpp_2m --steps 5 $S --out samples/ve-dpmpp.npz
    run sample-subvp-unipc        sample --run runs/subvp --solver unipc --steps 6 $S --out samples/subvp-unipc.npz
    run sample-cosine-heun        sample --run runs/cosine --solver heun --steps 6 $S --out samples/cosine-heun.npz
    run sample-bf16-em            sample --run runs/bf16 --solver em --steps 6 $S --out samples/bf16-em.npz
    run sample-cond-label-guid    sample --run runs/cond2d --label 3 --guidance 1.5 --solver dpmpp_2m --steps 8 $S --out samples/cond-label3.npz
    run sample-cond-label-all     sample --run runs/cond2d --label all --solver em --steps 8 $S --out samples/cond-all.npz
    run sample-cond-all-guid-pc   sample --run runs/cond2d --label all --guidance 1 --solver pc --steps 4 --batch-size 30 --n 64 --json --out samples/cond-all-pc.npz
    run sample-emb-one            sample --run runs/emb --embedding inputs/emb_one.npy --solver euler --steps 6 --n 50 --json --out samples/emb-one.npz
    run sample-emb-rows-guid      sample --run runs/emb --embedding inputs/emb_rows.npy --guidance 0.5 --solver dpmpp_2m --steps 6 --n 50 --json --out samples/emb-rows.npz
    run sample-mask-em            sample --run runs/vp --mask inputs/mask2d.npz --solver em --steps 8 $S --out samples/mask-em.npz
    run sample-mask-pc-rows       sample --run runs/vp --mask inputs/mask2d_rows.npz --solver pc --steps 4 --n 50 --json --out samples/mask-pc-rows.npz
    run sample-mask-repaint       sample --run runs/vp --mask inputs/mask2d.npz --inverse repaint --steps 8 --jump 2 --resample 2 --n 50 --json --out samples/mask-repaint.npz
    local method extra
    for method in replacement repaint dps smc; do
        case $method in
            repaint) extra="--jump 2 --resample 3" ;;
            dps) extra="--step-size 0.5" ;;
            smc) extra="--particles 8" ;;
            *) extra="" ;;
        esac
        run "sample-observe-$method" sample --run runs/vp --observe inputs/obs2d.npz --inverse $method --steps 8 $extra --n 40 --json --out samples/observe-$method.npz
    done
    run sample-observe-default    sample --run runs/vp --observe inputs/obs2d_exact.npz --steps 6 --particles 4 --n 20 --json --out samples/observe-default.npz
    run sample-observe-dps-euler  sample --run runs/vp --observe inputs/obs2d.npz --inverse dps --solver euler --steps 6 --n 20 --json --out samples/observe-dps-euler.npz
    run err-sample-label-uncond   sample --run runs/vp --label 3 --solver em --steps 3 --n 4 --json --out samples/e1.npz
    run err-sample-inverse-nomask sample --run runs/vp --inverse dps --steps 3 --n 4 --out samples/e3.npz
    run err-sample-exists-other   sample --run runs/vp --solver em --steps 5 --n 200 --json --out samples/vp-em.npz
    run sample-force              sample --run runs/vp --solver em --steps 5 --n 30 --force --json --out samples/vp-force.npz
    run err-sample-no-run         sample --run runs/nosuchrun --solver em --steps 3 --n 4 --out samples/e5.npz

    # ----- likelihood of the vector runs; demo
    run lik-vp                    likelihood --run runs/vp --n 100 $ODE --json
    run lik-vp-hutchinson         likelihood --run runs/vp --n 50 --divergence hutchinson --probes 2 $ODE --seed 1 --json
    run lik-vp-text               likelihood --run runs/vp --n 50 $ODE
    run lik-ve-data               likelihood --run runs/ve --data inputs/emb_data.npz --n 40 $ODE --json
    run demo-quick                demo --quick --out demo.png
    run err-demo-exists           demo --quick --out demo.png
}

lane_b() {
    LANE=B
    # ----- train: digits (1x8x8), conditional, DDPM++, cascade, autoencoder and latent
    run train-digits          train --data digits $IMG --run runs/digits
    run train-digits-cond     train --data digits --conditional $IMG --run runs/cdigits
    run train-digits-ddpmpp   train --data digits --net ddpmpp_small8 --steps 3 --batch-size 8 --quiet --run runs/ddpmpp
    run train-base4           train --data digits --downsample 2 $IMG --run runs/base4
    run train-sr8             train --data digits --super-res 2 $IMG --run runs/sr8
    run train-ae              train --data digits --autoencoder $IMG --run runs/ae
    run train-latent          train --latent runs/ae $IMG --run runs/latent
    run train-sample-every    train --data digits --steps 4 --batch-size 8 --sample-every 2 --quiet --run runs/snap
    run err-train-width-unet  train --data digits --width 8 --steps 2 --quiet --run runs/bad

    # ----- sample images
    run sample-digits-euler       sample --run runs/digits --solver euler --steps 4 --n 80 --json --out samples/digits-euler.npz
    run sample-digits-pc          sample --run runs/digits --solver pc --steps 4 --n 8 --json --out samples/digits-pc.npz
    run sample-digits-dpm-stats   sample --run runs/digits --solver dpmpp_2m --steps 5 --n 16 --json --out samples/digits-dpm5.npz
    run sample-digits-unipc-stats sample --run runs/digits --solver unipc --steps 4 --n 16 --batch-size 6 --json --out samples/digits-unipc4.npz
    run sample-digits-mask        sample --run runs/digits --mask inputs/mask_digits.npz --solver em --steps 5 --n 8 --json --out samples/digits-mask.npz
    run sample-digits-text        sample --run runs/digits --solver heun --steps 3 --n 8 --out samples/digits-text.npz
    run sample-cdigits-all        sample --run runs/cdigits --label all --solver dpmpp_2m --steps 5 --n 20 --json --out samples/cdigits-all.npz
    run sample-cdigits-label-guid sample --run runs/cdigits --label 7 --guidance 2 --solver euler --steps 4 --n 8 --json --out samples/cdigits-7.npz
    run sample-ddpmpp             sample --run runs/ddpmpp --solver euler --steps 3 --n 4 --json --out samples/ddpmpp.npz
    run sample-cascade            sample --cascade runs/base4 runs/sr8 --solver euler --steps 5 --sr-steps 3 --n 8 --json --out samples/cascade.npz
    run sample-cascade-sr-solver  sample --cascade runs/base4 runs/sr8 --solver em --steps 4 --sr-solver dpmpp_2m --sr-steps 3 --aug-level 0.1 --n 6 --batch-size 4 --json --out samples/cascade2.npz
    run sample-cascade-default    sample --cascade runs/base4 runs/sr8 --solver euler --steps 2 --n 4 --json
    run sample-latent             sample --run runs/latent --solver euler --steps 5 --n 8 --json --out samples/latent.npz
    run sample-latent-dpm         sample --run runs/latent --solver dpmpp_2m --steps 4 --n 8 --json --out samples/latent-dpm.npz
    run err-sample-cascade-seeds  sample --cascade runs/base4 runs/sr8 --seeds 0-3 --solver euler --steps 2 --out samples/e2.npz
    run err-sample-latent-mask    sample --run runs/latent --mask inputs/mask_digits.npz --solver em --steps 3 --n 4 --out samples/e4.npz

    # ----- likelihood (bits/dim, latent NLL) and fid
    run lik-digits                likelihood --run runs/digits --n 6 --divergence hutchinson --rtol 1e-2 --atol 1e-2 --json
    run lik-digits-text           likelihood --run runs/digits --n 4 --divergence hutchinson --probes 2 --rtol 1e-2 --atol 1e-2
    run lik-latent                likelihood --run runs/latent --n 6 --rtol 1e-2 --atol 1e-2 --json
    run lik-latent-text           likelihood --run runs/latent --n 4 --divergence hutchinson --rtol 1e-2 --atol 1e-2
    run fid-digits                fid --run runs/digits --n 200 --solver dpmpp_2m --steps 5 --batch-size 100 --json
    run fid-digits-text           fid --run runs/digits --n 100 --solver euler --steps 3 --seed 2
    run fid-cdigits-all           fid --run runs/cdigits --label all --guidance 1 --n 200 --solver dpmpp_2m --steps 5 --json
    run fid-samples-file          fid --samples samples/digits-euler.npz --run runs/digits --json
    run fid-samples-data          fid --samples samples/digits-euler.npz --data digits --seed 3 --json
    run fid-latent                fid --run runs/latent --n 80 --solver euler --steps 3 --json
    run err-fid-small-n           fid --run runs/digits --n 20 --solver euler --steps 2 --json
    run err-fid-guidance-nolabel  fid --run runs/digits --n 50 --guidance 1 --json
    run err-fid-samples-n         fid --samples samples/digits-euler.npz --run runs/digits --n 10
    run err-convert-missing       convert inputs/nosuch.pth --from score_sde --config small_ddpmpp_continuous --out runs/conv
    run version                   --version
    run err-unknown-command       nosuchcommand
}

lane_a &
PID_A=$!
lane_b &
PID_B=$!
wait $PID_A $PID_B

# ----- Z: what depends on every run (the most recent one by checkpoint time) -----------------
LANE=Z
run train-last            train --data circles --steps 3 --batch-size 32 --width 8 --quiet --run runs/last
run sample-most-recent    sample --solver em --steps 3 --n 10 --json --out samples/recent.npz
run lik-most-recent       likelihood --n 20 $ODE --json

T1=$(date +%s.%N)
TOTAL=$(echo "$T1 - $T0" | bc)

# ----- the log: one JSON record per command, in order ------------------------------------------
python - "$OUTDIR" "$CHECKOUT" "$MODULE" "$TOTAL" <<'EOF'
import json, os, sys
outdir, checkout, module, total = sys.argv[1:5]
rec_dir = os.path.join(outdir, "records")
stems = sorted({f.rsplit(".", 1)[0] for f in os.listdir(rec_dir)})
with open(os.path.join(outdir, "log"), "w") as log:
    for stem in stems:
        base = os.path.join(rec_dir, stem)
        def read(ext):
            with open(f"{base}.{ext}", encoding="utf-8", errors="replace") as f:
                return f.read()
        with open(f"{base}.args", "rb") as f:
            args = [a for a in f.read().decode().split("\0") if a]
        record = {"seq": stem[:4], "name": stem[5:], "args": args, "rc": int(read("rc")),
                  "stdout": read("stdout"), "stderr": read("stderr"),
                  "seconds": float(read("seconds"))}
        log.write(json.dumps(record) + "\n")
with open(os.path.join(outdir, "meta.json"), "w") as f:
    json.dump({"checkout": checkout, "outdir": outdir, "module": module,
               "commands": len(stems), "total_seconds": float(total)}, f, indent=2)
EOF
printf 'captured %s commands in %.0f s into %s\n' "$(wc -l < "$OUTDIR/log")" "$TOTAL" "$OUTDIR" >&2
