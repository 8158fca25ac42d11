"""CA²-SIS: semantic image synthesis with class-adaptive cross-attention, and a SPADE baseline."""
