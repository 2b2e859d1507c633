"""Modelling: timm models, prediction data, distributed runs, training."""
