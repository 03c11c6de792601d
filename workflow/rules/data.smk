# Corpus -> tokenizer -> packed token files. `prepare` is the only rule that may use the network,
# so it runs where the workflow is launched (a login node on a cluster), never on a compute node.


localrules:
    prepare,


rule prepare:
    output:
        train=f"{TEXT_DIR}/train.jsonl",
        valid=f"{TEXT_DIR}/valid.jsonl",
        test=f"{TEXT_DIR}/test.jsonl",
        test_raw=f"{TEXT_DIR}/test.raw",
        manifest=f"{TEXT_DIR}/manifest.json",
    log:
        f"results/logs/{TIER}/prepare.log",
    params:
        cfg=json_arg("data"),
    shell:
        "{PYTHON} -m gdn prepare --config-json {params.cfg} --out {TEXT_DIR} > {log} 2>&1"


rule tokenizer:
    input:
        train=rules.prepare.output.train,
    output:
        TOKENIZER,
    log:
        f"results/logs/{TIER}/tokenizer.log",
    params:
        cfg=json_arg("tokenizer"),
    shell:
        "{PYTHON} -m gdn tokenizer --config-json {params.cfg} --train {input.train} --out {output} > {log} 2>&1"


rule tokenize:
    input:
        text=f"{TEXT_DIR}/{{split}}.jsonl",
        tokenizer=TOKENIZER,
    output:
        bin=f"{DATA_DIR}/{{split}}.bin",
        meta=f"{DATA_DIR}/{{split}}.meta.json",
    log:
        f"results/logs/{TIER}/tokenize-{{split}}.log",
    wildcard_constraints:
        split="train|valid|test",
    shell:
        "{PYTHON} -m gdn tokenize --text {input.text} --tokenizer {input.tokenizer} --out {output.bin} > {log} 2>&1"
