# Coordinate check: activation and update sizes vs width over the first optimizer steps.

COORD_DIR = f"results/coord/{TIER}"
ALL_COORD = [f"{COORD_DIR}/{variant}.json" for variant in config["variants"]] if config.get("coordcheck") else []


rule coordcheck:
    input:
        train=f"{DATA_DIR}/train.bin",
    output:
        f"{COORD_DIR}/{{variant}}.json",
    log:
        f"results/logs/{TIER}/coordcheck-{{variant}}.log",
    params:
        python=PYTHON,
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        device=config["device"],
        cfg=json_arg("model", "coordcheck", "train"),
    threads: config["train"].get("threads", 1)
    resources:
        gpu=GPU_PER_JOB,
        gpu_mem_mb=lambda wildcards: GPU_PER_JOB * gdn_launch.coord_memory_mb(config, VARIANTS[wildcards.variant].family),
    conda:
        CONDA_ENV
    shell:
        "GDN_JOBS_PER_GPU={params.jobs_per_gpu} {params.python} -m gdn coordcheck --variant {wildcards.variant}"
        " --config-json {params.cfg}"
        " --train-bin {input.train} --device {params.device} --out {output} > {log} 2>&1"
