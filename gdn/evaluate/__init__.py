"""Evaluation of trained runs: WikiText-103 perplexities and lm-eval zero-shot tasks.

Modules: `run` (the `evaluate` command), `prepare_tasks` (the `prepare-tasks` command),
`wikitext` (perplexities), `harness` (lm-eval model adapter and task runner), `scoring`
(batched log-likelihoods and greedy generation), `tasks` (local task data and YAMLs),
`published` (reference figures from the GDN paper).
"""
