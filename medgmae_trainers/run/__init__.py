"""The training-run core shared by pretraining, classification and registration.

Each loop is a plain function that builds its model and data, then leans on these pieces for what
every resumable run needs, in this order (`session.RunFolder` holds the folder's part):

    run_dir = RunFolder(out, FORMAT, WHAT, resume, log)             # fresh, or resume from latest
    optimizer = AdamW(param_groups(model, wd), ...)                # the one no-decay rule
    scheduler = LambdaLR(optimizer, lr_lambda(warmup, total))      # warmup + cosine, torch's own scheduler
    start = run_dir.restore(model, optimizer, scheduler, asdict(s)) if run_dir.state else 0
                                                                   # settings check (RUN_ONLY), state, RNG
    metrics = run_dir.metrics(start)                                # drops rows logged after the checkpoint
    check_finite(where, lr, run_dir.latest, loss, grad_norm)        # each step: UserError (exit 2), no save
    run_dir.save_latest(model, optimizer, scheduler, settings=asdict(s), step=step)
    with StopSignals() as stop: ... raise run_dir.interrupted(signum, where, saved_at)  # exit 128 + signum

`StopSignals`, `Interrupted` and the exit code live in `medgmae_plans.runtime` beside `cli_entry`,
which maps `Interrupted` to its code for every command; atomic writing is `medgmae_plans.runtime.atomic`.
"""
from .checkpoint import FINAL, LATEST, load_checkpoint, restore_training, training_state
from .device import DEVICE_HELP, resolve_device
from .metrics import MetricsLog
from .optim import NO_DECAY, lr_lambda, no_decay, param_groups, polynomial_decay
from .precision import bf16_autocast, native_cpu_bf16
from .resume import RUN_ONLY, check_settings, resume_state
from .rng import capture_rng, restore_rng
from .session import RunFolder, check_finite

__all__ = ["DEVICE_HELP", "FINAL", "LATEST", "MetricsLog", "NO_DECAY", "RUN_ONLY", "RunFolder", "bf16_autocast",
           "capture_rng", "check_finite", "check_settings", "load_checkpoint", "lr_lambda", "native_cpu_bf16",
           "no_decay", "param_groups", "polynomial_decay", "resolve_device", "restore_rng", "restore_training",
           "resume_state", "training_state"]
