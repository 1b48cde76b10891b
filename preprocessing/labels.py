"""AMOS22 task-1 label map: the toolkit's common organ vocabulary.

The phantom writes these ids and names, and converters map other datasets' organs onto them where
they overlap, so one configuration serves the phantom and AMOS.
"""
AMOS_LABELS: dict[str, int] = {
    "background": 0,
    "spleen": 1,
    "right kidney": 2,
    "left kidney": 3,
    "gall bladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "postcava": 9,
    "pancreas": 10,
    "right adrenal gland": 11,
    "left adrenal gland": 12,
    "duodenum": 13,
    "bladder": 14,
    "prostate/uterus": 15,
}

# The experiment's endpoint (issue 26): Dice averaged over these eight organs, by their names above.
# Each is labelled by the phantom and by every abdominal dataset the converters read (AMOS, FLARE22,
# BTCV, AbdomenAtlas), so the endpoint is computed the same way on each. The main job's report
# (`evaluation.main_job_report`) and the experiment's benchmark read it from here.
ENDPOINT_ORGANS: tuple[str, ...] = ("liver", "spleen", "right kidney", "left kidney", "stomach", "aorta",
                                    "postcava", "pancreas")
