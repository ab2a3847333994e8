"""What a model is for: text <-> tensors for classify, embed and raw tensors; served models and their registry."""
