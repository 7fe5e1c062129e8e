"""The archive format: tar stream parsing, path safety, exclusion, compression, manifests."""
