# One job per cell. The run directory keeps a checkpoint while training; a killed job resumes from it.


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


rule train:
    input:
        train=f"{DATA_DIR}/train.bin",
        valid=f"{DATA_DIR}/valid.bin",
        tokenizer=TOKENIZER,
    output:
        f"{RUN_DIR}/metrics.json",
    log:
        f"{RUN_DIR}/train.log",
    params:
        cfg=train_payload,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    threads: config["train"].get("threads", 1)
    resources:
        gpu=GPU_PER_JOB,
    shell:
        "{PYTHON} -m gdn train --config-json {params.cfg} --train-bin {input.train} --valid-bin {input.valid}"
        " --tokenizer {input.tokenizer} --out {params.out} > {log} 2>&1"


ALL_METRICS = [f"{cell.run_dir}/metrics.json" for cell in CELLS]
