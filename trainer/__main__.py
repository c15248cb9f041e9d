"""``python -m trainer ...`` is ``erc-train ...``: the entry point torchrun starts in every worker."""

from trainer.cli import main

main()
