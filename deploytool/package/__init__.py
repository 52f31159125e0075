"""The package: its folder, manifest, test vectors, README and archive."""
