"""Downstream evaluation through lm-evaluation-harness (the optional `eval` extra: `pip install pytrain[eval]`).

    lm.py     a pytrain model (sharded or not) as the harness's language model (PytrainLM)
    tasks.py  which tasks, read offline (local YAML/JSONL or the datasets cache); running them; their metrics

Used by `pytrain eval` (pytrain.eval, on a run's checkpoint) and by the trainer (pytrain.train.downstream,
every `eval.every` steps). Nothing here imports lm_eval until `require_harness()` has checked it is installed.
"""
