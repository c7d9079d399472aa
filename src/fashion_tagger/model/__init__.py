"""What every stage shares: the model's spec, backbones and their weights, heads, decoding,
preprocessing and loading. Imports no stage package (training, inference, evaluation, serving)."""
