"""Quality evaluation: datasets (JSONL and the shipped three), metrics, bootstrap intervals,
and a runner that answers with every method through the same Steerer as ``steerc run``."""

from steerc.eval.data import DatasetError, Example, load_dataset, load_jsonl, split_examples
from steerc.eval.metrics import best_subspan_em, exact_match, f1_score, normalize_answer, score
from steerc.eval.runner import Variant, method_variants, run_eval
from steerc.eval.stats import bootstrap_mean, paired_comparison
from steerc.eval.summary import PRIMARY, summarize, summary_markdown

__all__ = [
    "DatasetError", "Example", "PRIMARY", "Variant", "best_subspan_em", "bootstrap_mean", "exact_match", "f1_score", "load_dataset", "load_jsonl",
    "method_variants", "normalize_answer", "paired_comparison", "run_eval", "score", "split_examples", "summarize", "summary_markdown",
]
