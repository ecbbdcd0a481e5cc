"""`iterate`: the prune + fine-tune (or reconstruct) loop, its TOML config and its work dir."""
