# One job per cell. The run directory keeps a checkpoint while training; a killed job resumes from it.
# A cell that train.distributed gives several GPUs is started by torchrun, one process per GPU.
# The counts are the job's resources (`gpus` per node, `nodes`), so a cluster profile may
# change them with set-resources without touching the workflow.



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
        launch=lambda wildcards, resources: gdn_launch.launch_command(
            PYTHON, max(1, resources.gpus), max(1, resources.nodes)
        ),
        cfg=train_payload,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    threads: config["train"].get("threads", 1)
    resources:
        gpu=lambda wildcards: gdn_launch.job_resources(config, int(wildcards.width), GPU_PER_JOB)["gpu"],
        gpus=lambda wildcards: gdn_launch.job_resources(config, int(wildcards.width), GPU_PER_JOB)["gpus"],
        nodes=lambda wildcards: gdn_launch.job_resources(config, int(wildcards.width), GPU_PER_JOB)["nodes"],
        gpu_mem_mb=lambda wildcards: GPU_PER_JOB
        * gdn_launch.train_memory_mb(config, VARIANTS[wildcards.variant].family, int(wildcards.width)),
    conda:
        CONDA_ENV
    shell:
        # Training reads only local files: a compute node without network access is fine.
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {params.launch} -m gdn train --config-json {params.cfg}"
        " --train-bin {input.train} --valid-bin {input.valid} --tokenizer {input.tokenizer} --out {params.out}"
        " > {log} 2>&1"


ALL_METRICS = [f"{cell.run_dir}/metrics.json" for cell in CELLS]
