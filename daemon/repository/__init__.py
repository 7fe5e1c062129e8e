"""What a storage holds and what it means: layout and ids, the commit marker, which copy,
garbage, verification; once for every backend."""
