# Input and parameter functions of the rules (kept apart from the rules, as the linter asks).


def train_payload(wildcards):
    cell = cell_of(wildcards)
    return json_arg(
        "model",
        "train",
        "device",
        "jobs_per_gpu",
        cell={
            "tier": cell.tier,
            "variant": cell.variant,
            "width": cell.width,
            "log2_lr": cell.log2_lr,
            "seed": cell.seed,
            "run_id": cell.run_id,
        },
    )


def prepare_tasks_options(wildcards):
    """--local-dir (and --manifest) when the task files come from a local folder instead of the hub."""
    options = []
    if LMEVAL_DATA.get("local_dir"):
        options += ["--local-dir", shlex.quote(LMEVAL_DATA["local_dir"])]
    if LMEVAL_DATA.get("manifest"):
        options += ["--manifest", shlex.quote(LMEVAL_DATA["manifest"])]
    return " ".join(options)
