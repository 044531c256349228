"""Labelled-data work: the dataset, metrics and threshold rules, evaluate, compare, explanation checks."""
