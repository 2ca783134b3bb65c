"""``python -m fluxsr_cli`` (also what ``accelerate launch -m fluxsr_cli ...`` runs)."""

from fluxsr_cli.cli import main

if __name__ == "__main__":
    main()
