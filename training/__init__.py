"""Offline training pipeline for emotion-edge: dataset parsers, training, int8 export and reports.

Entry points: ``python -m training.face`` and ``python -m training.speech`` (see training/README.md).
"""
