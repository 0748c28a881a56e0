"""Recording, datasets, training, and closed-loop evaluation campaigns (everything above sim and agent)."""
