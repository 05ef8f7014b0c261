"""A realistic Flower app (10 clients × 500 CIFAR-10 images, 2 local epochs) audited by fedleak (see README.md)."""
