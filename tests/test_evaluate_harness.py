"""Evaluation through the real lm-eval harness, offline, on a tiny random model.

Everything is generated here: a byte-level BPE tokenizer trained on a few sentences, a
randomly initialized GDN model, a small wikitext-like text and tiny task files.
"""

import json
import math
import os
import random

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

torch = pytest.importorskip("torch")

SPEC = {
    "n_layers": 2,
    "base_width": 32,
    "width_mode": "head_dim",
    "n_heads": 2,
    "head_dim": 16,
    "gdn_expand_v": 1,
    "mlp_ratio": {"transformer": 2.75, "gdn": 2.0},
    "init_std": 0.02,
    "input_multiplier": 1.0,
    "output_multiplier": 1.0,
    "readout_zero_init": True,
    "max_position_embeddings": 512,
}
WORDS = "the a river city army song album game was is in of and to for with by on first later new old".split()
CONTEXT = 32


def sentence(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
    return " ".join(words).capitalize() + " ."


def wikitext_like(rng, pages=4):
    """Raw WikiText layout: " \\n" blank lines, " = Title = " pages, " = = Section = = " headings."""
    lines = [" "]
    for p in range(pages):
        lines += [f" = Page {p} title = ", " "]
        for s in range(2):
            lines += [
                " " + " ".join(sentence(rng) for _ in range(3)) + " It has 1 @,@ 000 @-@ year ( old ) parts . ",
                " ",
            ]
            lines += [f" = = Section {s} = = ", " ", " " + sentence(rng) + " ", " "]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A completed run folder: metrics.json and model/ with the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gdn.build import build_model

    rng = random.Random(0)
    run_dir = tmp_path_factory.mktemp("run")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([sentence(rng) for _ in range(200)] + [wikitext_like(rng, 1)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    # gdn_sp: a non-zero readout, so the random model's predictions are not uniform.
    model = build_model(SPEC, "gdn_sp", 32, len(tokenizer), seed=0).model
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed"}))
    raw = run_dir / "wiki.test.raw"
    raw.write_text(wikitext_like(random.Random(1)), encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def scorer(saved_run):
    from gdn.evaluate.scoring import CausalScorer, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(saved_run / "model", torch.device("cpu"))
    return CausalScorer(model, tokenizer, torch.device("cpu"), max_length=CONTEXT, batch_size=4)


def write_tiny_task_files(folder, rng):
    """A few rows of every default task, in the layouts docs/evaluation.md describes."""

    def rows(name, make, n=4):
        with open(folder / name, "w") as f:
            for i in range(n):
                f.write(json.dumps(make(i)) + "\n")

    rows("lambada_openai_test.jsonl", lambda i: {"text": sentence(rng)[:-2]})
    rows(
        "piqa_validation.jsonl",
        lambda i: {"goal": sentence(rng), "sol1": sentence(rng), "sol2": sentence(rng), "label": i % 2},
    )
    rows(
        "hellaswag_validation_preprocessed.jsonl",
        lambda i: {"query": sentence(rng), "choices": [sentence(rng) for _ in range(4)], "gold": i % 4},
    )
    rows(
        "winogrande_xl_validation.jsonl",
        lambda i: {"sentence": "The river _ was old .", "option1": "city", "option2": "army", "answer": "12"[i % 2]},
    )
    for name in ("arc_easy_test.jsonl", "arc_challenge_test.jsonl"):
        rows(
            name,
            lambda i: {
                "question": sentence(rng),
                "answerKey": "ABCD"[i],
                "choices": {"text": [sentence(rng) for _ in range(4)], "label": list("ABCD")},
            },
        )


@pytest.fixture(scope="module")
def tasks_dir(saved_run, tmp_path_factory):
    """Every default task plus wikitext from tiny local files, through prepare-tasks."""
    from gdn.evaluate.prepare_tasks import prepare
    from gdn.evaluate.tasks import DEFAULT_TASKS

    local = tmp_path_factory.mktemp("local")
    write_tiny_task_files(local, random.Random(2))
    out = tmp_path_factory.mktemp("lmeval")
    prepare(list(DEFAULT_TASKS), out, local_dir=local)
    prepare(["wikitext"], out, wikitext_test=saved_run / "wiki.test.raw")
    return out


def test_scores_match_a_plain_forward_pass(scorer):
    """Batched, right-padded scoring equals scoring each pair alone with a full forward."""
    import torch.nn.functional as F

    pairs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), (list(range(20, 60)), [61])]
    got = scorer.score_pairs(pairs)
    for (context, continuation), score in zip(pairs, got, strict=True):
        whole = (context + continuation)[-(CONTEXT + 1) :]
        logits = scorer.model(torch.tensor([whole[:-1]])).logits[0]
        logprobs = F.log_softmax(logits[-len(continuation) :], -1)
        expected = sum(logprobs[i, t].item() for i, t in enumerate(continuation))
        assert score.logprob == pytest.approx(expected, abs=1e-4)


def test_a_continuation_longer_than_the_window_is_scored_in_pieces(scorer):
    """Scored like rolling log-likelihood: the same windows, the same total."""
    tokens = [(7 * i) % 250 + 3 for i in range(3 * CONTEXT + 5)]
    (score,) = scorer.score_pairs([([scorer.eos_id], tokens)])
    (rolling,) = scorer.rolling_loglikelihoods([tokens])
    assert score.n_tokens == len(tokens)
    assert score.logprob == pytest.approx(rolling, abs=1e-4)


def test_sliding_windows_predict_every_token_once(scorer):
    tokens = list(range(3, 103))
    for stride in (None, 8, 1):
        windows = scorer.rolling_windows(tokens, stride)
        predicted = [t for _, continuation in windows for t in continuation]
        assert predicted == tokens
        assert all(len(c) + len(p) - 1 <= CONTEXT for c, p in windows)


def test_page_split_keeps_every_top_level_page(saved_run):
    from gdn.evaluate.wikitext import read_test_text, split_pages

    pages = split_pages(read_test_text(saved_run / "wiki.test.raw"))
    assert [p.split("\n")[0] for p in pages] == [f" = Page {i} title = " for i in range(4)]
    assert all(" = = Section 1 = = " in p for p in pages)


def test_hub_parquet_rows_give_back_the_raw_file(saved_run, tmp_path):
    import pandas as pd

    from gdn.evaluate.wikitext import read_test_text

    raw = (saved_run / "wiki.test.raw").read_text(encoding="utf-8")
    rows = ["" if line == " \n" else line for line in raw.splitlines(keepends=True)]
    pd.DataFrame({"text": rows}).to_parquet(tmp_path / "test-00000-of-00001.parquet")
    assert read_test_text(tmp_path / "test-00000-of-00001.parquet") == raw


def test_test_text_without_its_blank_lines_is_refused(saved_run, tmp_path):
    from gdn.evaluate.wikitext import read_test_text

    raw = (saved_run / "wiki.test.raw").read_text(encoding="utf-8")
    (tmp_path / "joined.raw").write_text(raw.replace(" \n", ""), encoding="utf-8")
    with pytest.raises(ValueError, match="original layout"):
        read_test_text(tmp_path / "joined.raw")


def test_word_perplexity_agrees_with_lm_eval_wikitext(scorer, saved_run, tasks_dir):
    """Our document-level metrics vs lm-eval's own `wikitext` task on the same model."""
    from gdn.evaluate.harness import GDNHarnessLM, run_tasks
    from gdn.evaluate.wikitext import evaluate_wikitext

    ours = {r["metric"]: r["value"] for r in evaluate_wikitext(scorer, saved_run / "wiki.test.raw", stride=None)}
    rows, _ = run_tasks(GDNHarnessLM(scorer), tasks_dir, ["wikitext"], bootstrap_iters=0)
    theirs = {r["metric"]: r["value"] for r in rows}
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-3), metric
    assert 1 < ours["word_perplexity"] < math.inf
    assert ours["tokens"] > 0 and ours["token_perplexity"] > 1


def test_default_tasks_run_offline_from_local_files(scorer, tasks_dir):
    """The six default tasks (multiple choice and lambada's loglikelihood) through lm-eval,
    reading only the prepared local files."""
    from gdn.evaluate.harness import GDNHarnessLM, run_tasks
    from gdn.evaluate.tasks import DEFAULT_TASKS

    rows, details = run_tasks(GDNHarnessLM(scorer), tasks_dir, list(DEFAULT_TASKS), limit=3, bootstrap_iters=10)
    got = {(r["task"], r["metric"]): r for r in rows}
    expected = {
        ("lambada_openai", "acc"),
        ("lambada_openai", "perplexity"),
        ("piqa", "acc"),
        ("hellaswag", "acc_norm"),
        ("winogrande", "acc"),
        ("arc_easy", "acc"),
        ("arc_challenge", "acc_norm"),
    }
    assert expected <= set(got)
    assert all(0 <= got[k]["value"] <= 1 for k in expected if k[1] != "perplexity")
    assert got[("piqa", "acc")]["stderr"] is not None
    assert details["samples"] == {t: 3 for t in DEFAULT_TASKS}


def greedy_by_full_forward(scorer, prompt, max_new):
    ids, new = scorer.encode(prompt), []
    for _ in range(max_new):
        token = scorer.model(torch.tensor([ids + new])).logits[0, -1].argmax().item()
        if token == scorer.eos_id:
            break
        new.append(token)
    return scorer.decode(new)


def test_generate_until_is_greedy_and_stops_at_until(scorer, tmp_path):
    """A generation task with `until`: outputs equal greedy decoding by full forward passes
    (no cache), cut at the stop string."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from gdn.evaluate.harness import GDNHarnessLM

    prompts = ["The river", "The river", "A new city was", "The first song"]  # a repeat: a batch of two
    full = {p: greedy_by_full_forward(scorer, p, 12) for p in prompts}
    # A stop string that occurs in the first output, so cutting is exercised.
    stop = next(c for c in full[prompts[0]][1:] if c.isascii() and c.isalnum())
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "x"}) + "\n" for p in prompts))
    (tmp_path / "tiny_gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        f"generation_kwargs:\n  until: [{json.dumps(stop)}]\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    results = simple_evaluate(
        model=GDNHarnessLM(scorer),
        tasks=["tiny_gen"],
        bootstrap_iters=0,
        task_manager=TaskManager(include_defaults=False, include_path=str(tmp_path)),
    )
    samples = results["samples"]["tiny_gen"]
    assert len(samples) == len(prompts)
    for sample in samples:
        prompt, output = sample["doc"]["prompt"], sample["resps"][0][0]
        assert output == full[prompt].split(stop)[0]
        assert stop not in output
    assert len(full[prompts[0]].split(stop)[0]) < len(full[prompts[0]])


def test_evaluate_command_writes_both_files(saved_run, tasks_dir, tmp_path):
    from gdn.evaluate.run import evaluate_run

    config = {
        "context": CONTEXT,
        "batch_size": 4,
        "wikitext": {"stride": 16},
        "lm_eval": {"tasks": ["piqa"], "limit": 3, "bootstrap_iters": 0},
    }
    evaluate_run(saved_run, saved_run / "wiki.test.raw", tasks_dir, config, tmp_path, device="cpu")
    wikitext = json.loads((tmp_path / "wikitext.json").read_text())
    lm_eval = json.loads((tmp_path / "lm_eval.json").read_text())
    for payload in (wikitext, lm_eval):
        assert payload["kind"] == "evaluation" and payload["status"] == "completed"
        assert payload["device"] == "cpu" and payload["wall_s"] > 0 and "lm_eval" in payload["versions"]
    metrics = {r["metric"] for r in wikitext["results"]}
    assert {"token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "tokens"} <= metrics
    assert all(r["task"] == "wikitext103" for r in wikitext["results"])
    assert wikitext["settings"]["stride"] == 16
    assert {(r["task"], r["metric"]) for r in lm_eval["results"]} == {("piqa", "acc"), ("piqa", "acc_norm")}
    assert lm_eval["settings"]["samples"] == {"piqa": 3}

    # No lm-eval tasks: lm_eval.json is still written, with no results.
    evaluate_run(
        saved_run,
        saved_run / "wiki.test.raw",
        tasks_dir,
        {"context": CONTEXT, "lm_eval": {"tasks": []}},
        tmp_path / "none",
        device="cpu",
    )
    assert json.loads((tmp_path / "none" / "lm_eval.json").read_text())["results"] == []


def test_context_defaults_to_the_training_sequence_length(saved_run, tasks_dir, tmp_path):
    from gdn.evaluate.run import evaluate_run

    metrics = json.loads((saved_run / "metrics.json").read_text())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model").symlink_to(saved_run / "model")
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "config": {"train": {"seq_len": 24}}}))
    evaluate_run(run_dir, saved_run / "wiki.test.raw", tasks_dir, {"lm_eval": {"tasks": []}}, tmp_path, device="cpu")
    assert json.loads((tmp_path / "wikitext.json").read_text())["settings"]["context"] == 24
