"""Preprocessors: the table of runners, the weight-free ones, and those backed by annotator libraries."""
