"""Headless core of the fine-tuning studio: data, training spec, XTuner jobs, convert, chat."""

__version__ = "0.1.0"
