"""harmonica's lab: the embedded models and their data, the judge, the demo, the baseline caches and the
evaluation harness. The core package ``harmonica`` never imports it (``pip install harmonica-cache[eval]``
brings its dependencies)."""
