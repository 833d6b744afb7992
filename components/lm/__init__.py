"""train-lm: an n-gram language model over the training text, for NeMo's n-gram decoding."""
