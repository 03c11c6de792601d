# One job per cell. The run directory keeps a checkpoint while training; a killed job resumes from it.


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
        python=PYTHON,
        cfg=train_payload,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    threads: config["train"].get("threads", 1)
    resources:
        gpu=GPU_PER_JOB,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn train --config-json {params.cfg} --train-bin {input.train} --valid-bin {input.valid}"
        " --tokenizer {input.tokenizer} --out {params.out} > {log} 2>&1"


ALL_METRICS = [f"{cell.run_dir}/metrics.json" for cell in CELLS]
