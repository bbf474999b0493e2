"""Training helpers shared by the scripts in train/ (router training lives here too)."""
