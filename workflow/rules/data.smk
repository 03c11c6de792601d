# Corpus -> tokenizer -> packed token files. `prepare` and `tokenizer` (GPT-2 files from the hub)
# are the only rules here that may use the network, so they run where the workflow is launched
# (a login node on a cluster), never on a compute node.


localrules:
    prepare,
    tokenizer,


rule prepare:
    output:
        train=f"{TEXT_DIR}/train.jsonl",
        valid=f"{TEXT_DIR}/valid.jsonl",
        test=f"{TEXT_DIR}/test.jsonl",
        test_raw=f"{TEXT_DIR}/test.raw",
        manifest=f"{TEXT_DIR}/manifest.json",
    log:
        f"results/logs/{DATA_TIER}/prepare.log",
    params:
        python=PYTHON,
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        cfg=json_arg("data"),
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn prepare --config-json {params.cfg} --out {params.out} > {log} 2>&1"


rule tokenizer:
    input:
        train=rules.prepare.output.train,
    output:
        TOKENIZER,
    log:
        f"results/logs/{DATA_TIER}/tokenizer.log",
    params:
        python=PYTHON,
        cfg=json_arg("tokenizer"),
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn tokenizer --config-json {params.cfg} --train {input.train} --out {output} > {log} 2>&1"


rule tokenize:
    input:
        text=f"{TEXT_DIR}/{{split}}.jsonl",
        tokenizer=TOKENIZER,
    output:
        bin=f"{DATA_DIR}/{{split}}.bin",
        meta=f"{DATA_DIR}/{{split}}.meta.json",
    log:
        f"results/logs/{DATA_TIER}/tokenize-{{split}}.log",
    wildcard_constraints:
        split="train|valid|test",
    params:
        python=PYTHON,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn tokenize --text {input.text} --tokenizer {input.tokenizer} --out {output.bin} > {log} 2>&1"
