"""``python -m conceptvault.cli``: what ``accelerate launch -m conceptvault.cli`` runs on each process."""

from . import main

main()
