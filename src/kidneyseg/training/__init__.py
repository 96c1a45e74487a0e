"""Training: losses, augmentation, the preprocessing cache, checkpoints and the fit loop."""
