"""Does MedGMAE pretraining help when labels are few? The CPU-scale experiment (slow, not in CI).

    python -m benchmarks.transfer [--root DIR] [--quick] [--seeds 5] [--replicates 3] [--pretrain-steps 12000]
                                  [--keep-steps 1000 4000] [--epochs N] [--iters-per-epoch 50] ...

Everything runs through the toolkit's console commands, as a user would, in `<root>/nnUNet_*`, on the
CPU recipe (`medgmae_plans/cpu_recipe.py`: `3d_lowres`, 48^3 patches, the tiny preset, one thread a
run, two runs side by side). Stages, each resumable (the same command line continues a killed run):

1. data: the phantom population (v3), 20 labelled cases (fold 0: 16 training, 4 validation), 10
   held-out test cases, 200 unlabelled cases; preprocessed, the unlabelled ones as a collection.
2. pretraining: voxel-MAE (`--decoder voxel`) and MedGMAE (`--decoder gaussian`), the same encoder,
   5 seeds each (seed 41 + k gives both objectives the same init, crops and masks), label-free
   (`--crop-centres body`) on the unlabelled collection and the labelled cases' images, float32
   (bf16 is not faster on this CPU: `benchmarks.pretrain_bf16`), 12,000 steps (10x the main job's
   1,200), keeping the encoder at 1,000 and 4,000 steps (`--keep-steps`): a learning curve.
3. quality: `benchmarks.pretrain_quality` on every checkpoint (one call per seed): masked MSE against
   the visible-mean baseline and the direct-fit ceiling.
4. probe: `medgmae_probe` on every checkpoint and on each seed's random init, fitted on the 10 % and
   the 100 % training cases of fold 0 (replicate k: labelled subset `--fraction-seed` 12345 + k, voxel
   draw and random weights seed 41 + k), its L2 weight chosen on the 4 validation cases, scored on
   the 10 test cases; the raw-patch baseline in the same runs.
5. fine-tuning at 10 % (fold 0), replicate k in 0..2 = pretraining seed 41 + k, fine-tuning seed
   41 + k, labelled subset k: scratch, voxel-MAE and MedGMAE from their 12,000-step checkpoints, one
   optimiser for all (AdamW, `finetune/optim.py`); scratch at 100 % (the same three replicates: the
   ceiling, and the second gate); nnU-Net's PlainConvUNet at 10 % with its own recipe, same patch
   and iterations (one replicate: an anchor, not part of the rules). Each run then predicts and
   scores the test cases.
6. analysis: the endpoint per (arm, seed, test case), the comparisons, the gates and the verdicts
   below, into `<root>/report/experiment.md` and `experiment.json`, the learning curves into
   `learning_curves.png`, and `medgmae_evaluate --compare`'s Table 1 beside them.

The fine-tuning budget (`--epochs` x `--iters-per-epoch`) was chosen before this run on fold 0's
validation cases, never the test cases: see `FINETUNE_BUDGET_NOTE` below.

Endpoint and rules, fixed before the run
----------------------------------------
Endpoint: per test case, the mean Dice over the eight organs `ENDPOINT_ORGANS` (liver, spleen, right
and left kidney, stomach, aorta, postcava (IVC), pancreas; an organ absent from both the reference
and the prediction is left out of that case's mean), averaged over the 10 test cases; the 15-organ
mean is reported beside it. All differences are in Dice points (percent).

Comparisons are paired by seed (replicate k of each arm) and by test case (`evaluation.seeds`):
per-seed differences, their 95 % t-interval over seeds, the sign count, and a two-level bootstrap
(seeds, then cases within each seed; 10,000 draws). "The interval excludes 0" means both the
t-interval and the two-level bootstrap interval do.

Gates (when one fails, the verdict it guards is "uninformative", not "does not help"):
- G1 pretraining long enough: the probe of voxel-MAE's 12,000-step encoder at 10 % beats its seed's
  random init, the interval excluding 0 (guards both verdicts).
- G2 the data can test label efficiency: scratch fine-tuned at 100 % beats scratch at 10 %, the
  interval excluding 0 (guards the fine-tuning verdict).

Verdicts, one for the probe (5 seeds, the 12,000-step encoders at 10 %) and one for fine-tuning (3
replicate pairs at 10 %), each from MedGMAE minus voxel-MAE and MedGMAE minus scratch (for the probe,
the seed's random init):
- "helps": in both comparisons the difference is positive in >= 4 of 5 seeds (probe) or in every
  pair (fine-tuning), the interval excludes 0, and the estimate is >= 2 points;
- "does not help": the gates pass and, in both comparisons, the upper ends of both intervals lie
  below +2 points;
- "helps no more than voxel-MAE": ahead of scratch as "helps" requires, and against voxel-MAE both
  upper ends below +2 points (pretraining helps; the Gaussian decoder adds nothing measurable);
- otherwise "inconclusive".

Outputs: `<root>/report/` holds `experiment.md` (the tables, gates and verdicts), `experiment.json`
(everything in it, with the per-seed numbers), `learning_curves.png`, Table 1 (`table1.md` and the
rest of `medgmae_evaluate --compare`), `transfer.log`, `transfer.json` (settings, the wall time of
every step and stage, rewritten after each step) and `logs/<step>.log`. `--quick` (6 + 2 test + 4
unlabelled cases, 2 seeds, 20 pretraining steps, 1 x 3 fine-tuning iterations) checks the
orchestration in minutes; its numbers mean nothing.
"""
from __future__ import annotations

from .runner import Runner
from .settings import DEFAULTS, FINETUNE_BUDGET_NOTE, QUICK, parse_args
from .steps import INITS, Step, build_steps, comparisons, finetune_folder, pretrain_folder, trainer_of

__all__ = ["DEFAULTS", "FINETUNE_BUDGET_NOTE", "INITS", "QUICK", "Runner", "Step", "build_steps", "comparisons",
           "finetune_folder", "parse_args", "pretrain_folder", "trainer_of"]
