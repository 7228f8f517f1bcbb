"""Publish a validated release to Zenodo: packaging, metadata, a careful client, resumable
state and write-back of DOIs (``icedamage publish``)."""
