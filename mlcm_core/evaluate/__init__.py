"""Evaluation of MLCM: cross-modal retrieval, inverse design, a classical baseline, the pre-training ablation.

Why a package with one concept per module: each evaluation answers a different question about the learned
embedding and has its own protocol, and the report needs all of them side by side:

* ``embedding``      — embed a set of store rows with a trained model (eval mode, no grad); effective rank.
* ``retrieval``      — does a material's embedding from one modality find the same material's embedding from
                        another? (top-k, median rank, with the chance level beside each number)
* ``full_gallery``   — the same question at the app's scale: a DOS/density query against every structure.
* ``inverse_design`` — does a DOS query retrieve crystals whose true DOS resembles it? (best-of-k ``dos_mae``
                        against random picks and an oracle)
* ``model_eval``     — the three above for one model, as the report shows them.
* ``baseline``       — Magpie composition features + random forest: the classical floor for fine-tuning.
* ``ablation``       — every pre-training method, same budget, same splits, several seeds; 2- vs 3-modal.
* ``report``         — results.json and the markdown tables.
* ``cli``            — ``mlcm evaluate`` (``main(argv)``).

Nothing is imported until used (``mlcm --help`` must not pay for torch or scikit-learn): the names below
resolve lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "BUDGETS",
    "METHODS",
    "AblationResult",
    "Budget",
    "Method",
    "compare_modalities",
    "effective_ranks",
    "embed_split",
    "evaluate_full_gallery",
    "evaluate_model",
    "full_gallery_table",
    "inverse_design",
    "inverse_design_from_arrays",
    "magpie_features",
    "magpie_rf_baseline",
    "magpie_rf_over_seeds",
    "main",
    "random_best_of_k",
    "render_markdown",
    "restrict_rows",
    "retrieval_metrics",
    "retrieval_table",
    "run_ablation",
    "run_evaluation",
    "target_rows",
    "write_report",
]

_WHERE = {
    "embed_split": "embedding", "effective_ranks": "embedding",
    "retrieval_metrics": "retrieval", "retrieval_table": "retrieval",
    "evaluate_full_gallery": "full_gallery", "full_gallery_table": "full_gallery",
    "inverse_design": "inverse_design", "inverse_design_from_arrays": "inverse_design",
    "random_best_of_k": "inverse_design",
    "magpie_features": "baseline", "magpie_rf_baseline": "baseline", "magpie_rf_over_seeds": "baseline",
    "target_rows": "baseline", "evaluate_model": "model_eval", "compare_modalities": "ablation",
    "BUDGETS": "ablation", "METHODS": "ablation", "AblationResult": "ablation", "Budget": "ablation",
    "Method": "ablation", "restrict_rows": "ablation", "run_ablation": "ablation",
    "render_markdown": "report", "write_report": "report",
    "main": "cli", "run_evaluation": "cli",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
