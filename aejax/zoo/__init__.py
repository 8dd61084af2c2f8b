"""The model zoo: the baselines a paper's ablation compares against, one file per model.

Every model here keeps aejax's model contract (aejax/models.py,
docs/extending.md) and nothing else: the trainer, checkpoints, evaluation and
`aejax.load` know none of them by name. aejax/models.py's `ZOO` maps each name
(`config.model.name`) to its file; docs/zoo.md has the table that compares them.
"""
