"""The training-run core shared by pretraining, classification and registration.

Each loop is a plain function that builds its model and data, then leans on these pieces for what
every resumable run needs, in this order:

    state = resume_state(out / LATEST, resume, FORMAT, WHAT)      # folder: fresh, or resume from latest
    check_settings(latest, state["settings"], asdict(settings))   # the one ignore-list policy
    optimizer = AdamW(param_groups(model, wd), ...)                # the one no-decay rule
    scheduler = LambdaLR(optimizer, lr_lambda(warmup, total))      # warmup + cosine, torch's own scheduler
    restore_training(state, model, optimizer, scheduler); restore_rng(state["rng"])
    metrics = MetricsLog(out / "metrics.jsonl", start)             # drops rows logged after the checkpoint
    with StopSignals() as stop: ... raise Interrupted(message, signum)   # exit 128 + signum (cli_entry)
    save_torch_atomic({"format": FORMAT, **training_state(...), "rng": capture_rng(), ...}, latest)

`StopSignals`, `Interrupted` and the exit code live in `medgmae_plans.runtime` beside `cli_entry`,
which maps `Interrupted` to its code for every command; atomic writing is `medgmae_plans.runtime.atomic`.
"""
from .checkpoint import FINAL, LATEST, load_checkpoint, restore_training, training_state
from .metrics import MetricsLog
from .optim import NO_DECAY, lr_lambda, no_decay, param_groups, polynomial_decay
from .precision import bf16_autocast, native_cpu_bf16
from .resume import RUN_ONLY, check_settings, resume_state
from .rng import capture_rng, restore_rng

__all__ = ["FINAL", "LATEST", "MetricsLog", "NO_DECAY", "RUN_ONLY", "bf16_autocast", "capture_rng", "check_settings",
           "load_checkpoint", "lr_lambda", "native_cpu_bf16", "no_decay", "param_groups", "polynomial_decay",
           "restore_rng", "restore_training", "resume_state", "training_state"]
