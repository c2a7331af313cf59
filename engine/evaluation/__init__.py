"""Offline evaluation: per-image mask scores, COD metrics, checkpoint predictors, the ``eval`` /
``predict`` commands and the post-training ``report``."""
