"""The model zoo's experiments: one file per model of aejax/zoo/ (docs/zoo.md)."""
