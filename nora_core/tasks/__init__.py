"""Tasks the trainer can run: toy regression and classification tasks, and the task interface."""
