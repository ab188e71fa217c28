"""Neural networks: the ResNet-10 encoder, the residual actor, the success classifier."""
