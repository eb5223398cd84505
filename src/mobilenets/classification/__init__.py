"""Image classification: data sources, the training task, evaluation metrics and prediction."""
