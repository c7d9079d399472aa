"""The dataset dir: manifest, image store, decoding, ingest and the tools that change it."""
