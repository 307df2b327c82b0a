"""MONAI models: bundle registry, preprocessing, prediction, explanations, demo training."""
