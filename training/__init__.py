"""Training: names data, vocabulary, models, and the train/eval/sample/plot CLI (needs torch)."""
