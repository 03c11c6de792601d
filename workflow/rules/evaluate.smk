# Evaluation of trained models: WikiText-103 perplexity (ours) and lm-eval tasks (the harness).
# `prepare_tasks` fetches the task datasets (or copies them from a local directory) once;
# evaluation jobs then run offline.

EVAL_CFG = config.get("evaluate") or {}
LMEVAL_DIR = f"resources/{TIER}/lmeval"  # per tier: building one tier never invalidates another's evaluations
LMEVAL_TASKS = gdn_config.settings(config, "evaluate")["lm_eval"]["tasks"]  # the schema's default when unset
EVAL_CELLS = gdn_config.evaluated_cells(config)  # evaluate.widths and evaluate.seeds
ALL_EVALS = [f"{c.run_dir}/eval/{name}.json" for c in EVAL_CELLS for name in ("wikitext", "lm_eval")]


localrules:
    prepare_tasks,


LMEVAL_DATA = config.get("lmeval_data") or {}


rule prepare_tasks:
    input:
        wikitext=rules.prepare.output.test_raw,
    output:
        f"{LMEVAL_DIR}/manifest.json",
    log:
        f"results/logs/{TIER}/prepare-tasks.log",
    params:
        python=PYTHON,
        tasks_dir=lambda wildcards, output: os.path.dirname(output[0]),
        tasks=" ".join(LMEVAL_TASKS),
        options=prepare_tasks_options,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn prepare-tasks --tasks {params.tasks} --out {params.tasks_dir} --wikitext-test {input.wikitext}"
        " {params.options} > {log} 2>&1"


rule evaluate:
    input:
        metrics=f"{RUN_DIR}/metrics.json",
        wikitext=rules.prepare.output.test_raw,
        tasks=rules.prepare_tasks.output,
    output:
        wikitext=f"{RUN_DIR}/eval/wikitext.json",
        lm_eval=f"{RUN_DIR}/eval/lm_eval.json",
    log:
        f"{RUN_DIR}/eval/evaluate.log",
    params:
        python=PYTHON,
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        device=config["device"],
        tasks_dir=lambda wildcards, input: os.path.dirname(input.tasks[0]),
        # how to evaluate, without which cells (choosing other cells must not rerun these)
        cfg=shlex.quote(
            json.dumps({k: v for k, v in EVAL_CFG.items() if k not in gdn_config.EVALUATE_SELECTION}, sort_keys=True)
        ),
        run=lambda wildcards, input: os.path.dirname(input.metrics),
        out=lambda wildcards, output: os.path.dirname(output.wikitext),
    threads: config["train"].get("threads", 1)
    resources:
        gpu=GPU_PER_JOB,
        gpu_mem_mb=lambda wildcards: GPU_PER_JOB
        * gdn_launch.eval_memory_mb(config, VARIANTS[wildcards.variant].family, int(wildcards.width)),
    conda:
        CONDA_ENV
    shell:
        "GDN_JOBS_PER_GPU={params.jobs_per_gpu} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
        " {params.python} -m gdn evaluate --run-dir {params.run} --wikitext-test {input.wikitext} --tasks-dir {params.tasks_dir} --config-json {params.cfg}"
        " --device {params.device} --out {params.out} > {log} 2>&1"
