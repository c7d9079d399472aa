"""Label quality: the audit (out-of-fold scores of every label), the review page and server that
keep a reviewer's decisions, auto-labelling with a trained model, and relabelling from decisions.

Everything here reads and writes files of a dataset dir (`label_issues.parquet`,
`review/decisions.jsonl`), not metrics of a run: the modules are imported where used, so that
importing the package stays free of torch.
"""
