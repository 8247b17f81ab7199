"""Evaluation: how well each model learns from feedback within a conversation.

- :mod:`~rl2f.evaluation.runner`: models, splits and feedback modes, and their rollouts;
- :mod:`~rl2f.evaluation.probe`: the sycophancy probe (a wrong critique of a correct answer);
- :mod:`~rl2f.evaluation.metrics`: cumulative accuracy by turn with bootstrap intervals,
  flip and repeat rates, leak rate, from episodes alone;
- :mod:`~rl2f.evaluation.schema`: the contract of ``reports/metrics.json``;
- :mod:`~rl2f.evaluation.episode_files`: where the evaluation episodes are stored;
- :mod:`~rl2f.evaluation.mlflow_log`: metrics, episode tables and traces in MLflow;
- :mod:`~rl2f.evaluation.figures` and :mod:`~rl2f.evaluation.examples`: what the report shows.
"""

from rl2f.evaluation.metrics import cell_metrics
from rl2f.evaluation.schema import metrics_schema, read_metrics, validate_metrics

__all__ = ["cell_metrics", "metrics_schema", "read_metrics", "validate_metrics"]
