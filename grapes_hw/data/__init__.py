"""Datasets: scikit-learn digits (embedded), Fashion-MNIST and MNIST from verified IDX files
(``sources``), loaded as float tensors with seeded subsets and validation splits
(``datasets``)."""
