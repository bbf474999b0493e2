"""``python -m harmonica.train``: router training from the installed package (``harmonica.training.cli``; ``--help``
lists every option). Imported only to run it: ``import harmonica`` does not load it."""

from harmonica.training.cli import main

if __name__ == "__main__":
    main()
