"""Evaluation: ``metrics`` (PSNR, SSIM variants, LPIPS, DISTS), ``realblur`` (the RealBlur protocol: ECC alignment),
``eval_sets`` (test-set layouts) and ``runner`` (`evaluate`, `sweep_timesteps`, summaries and tables).

Example:
    >>> from fidediff_pipeline.evaluation import evaluate, load_eval_set, load_pipeline
    >>> summary = evaluate(load_pipeline(), load_eval_set("gopro", "data/GOPRO/test"), "eval/gopro")  # doctest: +SKIP
"""

from .eval_sets import DATASETS, EvalPair, load_eval_set
from .runner import (
    evaluate, load_pipeline, paper_comparison_table, summarize, summary_markdown, sweep_markdown, sweep_timesteps,
)

__all__ = [
    "DATASETS", "EvalPair", "evaluate", "load_eval_set", "load_pipeline", "paper_comparison_table", "summarize",
    "summary_markdown", "sweep_markdown", "sweep_timesteps",
]
