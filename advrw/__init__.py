"""advrw: instance-reweighted adversarial training and evaluation behind one Hydra CLI."""

__version__ = "0.1.0"
