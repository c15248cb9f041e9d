"""erc-train: datasets, emotion anchors, losses, the two training stages, evaluation and plots.

``trainer`` imports ``erc_stream`` (prompt, model, artifact); ``erc_stream`` never imports
``trainer``.
"""

__all__: list[str] = []
