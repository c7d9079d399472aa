"""Evaluation: metrics as the literature reports them, an HTML report, threshold calibration.

`evaluate(run_dir, dataset_dir)` writes run_dir/metrics.json and run_dir/report.html;
`calibrate(run_dir, dataset_dir)` stores per-attribute thresholds in model.json.
"""

from fashion_tagger.evaluation.evaluate import calibrate, evaluate

__all__ = ["calibrate", "evaluate"]
